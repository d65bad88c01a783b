package bench

import (
	"testing"
	"time"
)

func TestWaiters(t *testing.T) {
	in, db := startAPI(t)
	res, err := Waiters(t.Context(), WaitersOptions{
		Instances: in, DB: db, Waiters: 30, LoadAt: []int{10},
		RampPerSec: 1000, LoadWindow: 300 * time.Millisecond, Settle: -1,
		Timeout: 20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Served != 30 || res.Errors != 0 {
		t.Errorf("served %d, errors %d", res.Served, res.Errors)
	}
	if len(res.Load) != 2 || res.Load[0].Waiters != 10 || res.Load[1].Waiters != 30 {
		t.Errorf("load steps: %+v", res.Load)
	}
	for _, l := range res.Load {
		if l.XactsPerSec < 0 {
			t.Errorf("load: %+v", l)
		}
	}
	// Wrapped: one count for all connections, no memory figures.
	if len(res.ConnsPerInstance) != 1 || res.ConnsPerInstance[0] < 1 || res.RSSPerWaiterBytes != nil {
		t.Errorf("conns %v, rss %v", res.ConnsPerInstance, res.RSSPerWaiterBytes)
	}
	checkCleanedUp(t, db)
}

func TestWaitersOptionsDefaults(t *testing.T) {
	o := WaitersOptions{}.withDefaults()
	if o.Waiters != 10_000 || len(o.LoadAt) != 2 || o.LoadAt[0] != 1000 || o.LoadAt[1] != 10_000 {
		t.Errorf("defaults: %+v", o)
	}
	o = WaitersOptions{Waiters: 5, LoadAt: []int{5, 2}}.withDefaults()
	if len(o.LoadAt) != 2 || o.LoadAt[0] != 2 || o.LoadAt[1] != 5 {
		t.Errorf("load steps: %v", o.LoadAt)
	}
	if err := (WaitersOptions{Instances: Wrap("k", "http://x"), DB: nil}).withDefaults().check(); err == nil {
		t.Error("no DB accepted")
	}
}
