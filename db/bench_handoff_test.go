package db

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkProbedHandoff times a keyed, probed handoff: a release on one
// instance until the keyed acquire waiting in line on another instance
// (ProbeOnHandoff, a fake prober that answers at once) returns with the
// device. Since migrations/00018 that includes confirming the handoff
// (one more statement) before the answer.
//
//	go test ./db -run '^$' -bench ProbedHandoff -benchtime 300x
func BenchmarkProbedHandoff(b *testing.B) {
	url := newDB(b)
	holder := newAllocator(b, url, testConfig(&fakeProber{}))
	cfg := testConfig(&fakeProber{})
	cfg.ProbeOnHandoff = true
	waiter := newAllocator(b, url, cfg)
	if _, err := holder.CreateDevice(b.Context(), DeviceSpec{Name: "d", Pool: "p", Address: "h:d", Probe: "tcp"}); err != nil {
		b.Fatal(err)
	}
	var latencies []time.Duration
	n := 0
	for b.Loop() {
		b.StopTimer()
		n++
		held, err := holder.Acquire(b.Context(), AcquireRequest{Selector: Selector{Pool: "p"}, Owner: "h"})
		if err != nil {
			b.Fatal(err)
		}
		var wg sync.WaitGroup
		var got Lease
		var gotErr error
		var at time.Time
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, _, gotErr = waiter.AcquireOrReplay(b.Context(), keyed("w", fmt.Sprintf("k%d", n), "p", 10*time.Second))
			at = time.Now()
		}()
		waitFor(b, "waiter in line", func() bool { return queueLength(b, holder, "p") == 1 })
		b.StartTimer()
		start := time.Now()
		if _, err := holder.Release(b.Context(), held.ID); err != nil {
			b.Fatal(err)
		}
		wg.Wait()
		b.StopTimer()
		if gotErr != nil {
			b.Fatal(gotErr)
		}
		latencies = append(latencies, at.Sub(start))
		if _, err := waiter.Release(b.Context(), got.ID); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportPercentiles(b, latencies)
}
