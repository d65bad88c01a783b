package db

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/devalloc/devalloc/db/probe"
)

// BenchmarkAcquire times one acquire transaction (pick, probe, grant,
// commit) on one device; the release is outside the timer.
//
//	go test ./db -run '^$' -bench Acquire -benchtime 2000x
func BenchmarkAcquire(b *testing.B) {
	for _, kind := range []string{"none", "tcp"} {
		b.Run("probe="+kind, func(b *testing.B) {
			a := newAllocator(b, newDB(b), testConfig(&probe.Network{}))
			addr := loopbackDevices(b, 1)[0]
			if _, err := a.CreateDevice(b.Context(), DeviceSpec{Name: "d", Pool: "p", Address: addr, Probe: kind}); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				l, err := a.Acquire(b.Context(), AcquireRequest{Selector: Selector{Pool: "p"}, Owner: "bench"})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if _, err := a.Release(b.Context(), l.ID); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkRelease times ending a lease (one statement: end the lease, free
// the device, NOTIFY through the trigger).
func BenchmarkRelease(b *testing.B) {
	a := newAllocator(b, newDB(b), testConfig(&probe.Network{}))
	if _, err := a.CreateDevice(b.Context(), DeviceSpec{Name: "d", Pool: "p", Address: "x", Probe: "none"}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		b.StopTimer()
		l, err := a.Acquire(b.Context(), AcquireRequest{Selector: Selector{Pool: "p"}, Owner: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := a.Release(b.Context(), l.ID); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCrossInstanceHandoff times a release on one instance until the
// acquire waiting in line on another instance returns with the device: the
// release statement hands it over, and the waiter's instance hears of it at
// commit, lease included, on its LISTEN connection.
func BenchmarkCrossInstanceHandoff(b *testing.B) {
	url := newDB(b)
	holder := newAllocator(b, url, testConfig(&probe.Network{}))
	waiter := newAllocator(b, url, testConfig(&probe.Network{}))
	if _, err := holder.CreateDevice(b.Context(), DeviceSpec{Name: "d", Pool: "p", Address: "x", Probe: "none"}); err != nil {
		b.Fatal(err)
	}
	var latencies []time.Duration
	for b.Loop() {
		b.StopTimer()
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
			got, gotErr = waiter.Acquire(b.Context(), AcquireRequest{Selector: Selector{Pool: "p"}, Wait: 10 * time.Second, Owner: "w"})
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

func reportPercentiles(b *testing.B, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	sorted := append([]time.Duration(nil), d...)
	slices.Sort(sorted)
	at := func(p float64) float64 { return float64(sorted[int(p*float64(len(sorted)-1))].Microseconds()) / 1000 }
	b.ReportMetric(at(0.50), "p50-ms")
	b.ReportMetric(at(0.99), "p99-ms")
}
