package db

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// pool_summary shows the acquires waiting for each pool across instances
// (the line), and forgets them when they stop waiting.
func TestPoolSummaryShowsWaitingAcrossInstances(t *testing.T) {
	url := newDB(t)
	cfg := testConfig(&fakeProber{})
	a := newAllocator(t, url, cfg)
	b := newAllocator(t, url, cfg)
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{}, 3)
	for i, inst := range []*Allocator{a, b, b} {
		go func() {
			_, _ = inst.Acquire(ctx, AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: time.Minute, Owner: fmt.Sprint("w", i)})
			done <- struct{}{}
		}()
	}
	summaryWaiting := func() int {
		var n int
		if err := a.pool.QueryRow(t.Context(), `SELECT waiting FROM devalloc.pool_summary WHERE pool = 'lab'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(t, "pool_summary to show 3 waiting", func() bool { return summaryWaiting() == 3 })
	cancel()
	for range 3 {
		<-done
	}
	waitFor(t, "pool_summary to show none waiting", func() bool { return summaryWaiting() == 0 })
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
}
