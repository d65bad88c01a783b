package db

import (
	"fmt"
	"testing"
	"time"

	"github.com/devalloc/devalloc/db/probe"
)

// labeledPoolSize is the pool BenchmarkAcquireLabeled picks from; every
// labeledSpecialEvery-th device carries the rare label.
const (
	labeledPoolSize     = 20000
	labeledSpecialEvery = 1000
)

// BenchmarkAcquireLabeled times an acquire + release cycle (both timed) in
// a pool of 20,000 probe-"none" devices of which 0.1 % (every 1000th)
// carry {"rack":"special"} and the rest {"rack":"r<n>"}. Each release sends
// the device to the back of the idle line, so with selector=0.1% the
// fitting devices soon sit behind thousands that do not fit: the case
// devalloc.pick_idle_device bounds through the label index. p50-ms and
// p99-ms are the acquire alone.
//
//	go test ./db -run '^$' -bench AcquireLabeled -benchtime 500x
func BenchmarkAcquireLabeled(b *testing.B) {
	for _, c := range []struct {
		name   string
		labels Labels
	}{
		{"selector=any", nil},
		{"selector=0.1%", Labels{"rack": "special"}},
	} {
		b.Run(c.name, func(b *testing.B) {
			a := newAllocator(b, newDB(b), testConfig(&probe.Network{}))
			seedLabeledPool(b, a, "p")
			req := AcquireRequest{Selector: Selector{Pool: "p", Labels: c.labels}, Owner: "bench"}
			var latencies []time.Duration
			for b.Loop() {
				start := time.Now()
				l, err := a.Acquire(b.Context(), req)
				latencies = append(latencies, time.Since(start))
				if err != nil {
					b.Fatal(err)
				}
				if c.labels != nil && l.Device.Labels["rack"] != "special" {
					b.Fatalf("selector %v picked %s %v", c.labels, l.Device.Name, l.Device.Labels)
				}
				if _, err := a.Release(b.Context(), l.ID); err != nil {
					b.Fatal(err)
				}
			}
			reportPercentiles(b, latencies)
		})
	}
}

// seedLabeledPool fills pool with labeledPoolSize probe-"none" devices in
// one statement, idle in id order (the oldest first), and vacuums and
// analyzes the table so the planner sees the pool's real size and label
// spread.
func seedLabeledPool(b *testing.B, a *Allocator, pool string) {
	b.Helper()
	if _, err := a.pool.Exec(b.Context(), `
		INSERT INTO devalloc.devices (name, pool, labels, address, probe, idle_since)
		SELECT format('dev-%s', lpad(i::text, 5, '0')), $1,
		       CASE WHEN i % $3::int = 0 THEN '{"rack":"special"}'::jsonb
		            ELSE jsonb_build_object('rack', 'r' || (i % 97)) END,
		       'x', 'none', now() - make_interval(secs => ($2::int - i)::float8)
		FROM generate_series(1, $2::int) AS i`,
		pool, labeledPoolSize, labeledSpecialEvery); err != nil {
		b.Fatal(err)
	}
	// VACUUM as well as ANALYZE: the insert left all 20,000 label entries
	// in the GIN index's pending list (ANALYZE does not flush it, only
	// VACUUM or autovacuum do), which every labeled pick would scan
	// linearly: a table autovacuum has not yet caught up with, not the pick.
	if _, err := a.pool.Exec(b.Context(), `VACUUM (ANALYZE) devalloc.devices`); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkAcquireProbeFreshness times an acquire + release cycle (both
// timed) on devices probed over tcp (loopback listeners): with freshness=off
// every acquire runs the transaction that probes; with freshness=1m a
// device released within the minute is granted in one statement, unprobed.
// The difference is what Config.ProbeFreshness saves. p50-ms and p99-ms
// are the acquire alone.
//
//	go test ./db -run '^$' -bench ProbeFreshness -benchtime 1000x
func BenchmarkAcquireProbeFreshness(b *testing.B) {
	for _, c := range []struct {
		name  string
		fresh time.Duration
	}{
		{"freshness=off", 0},
		{"freshness=1m", time.Minute},
	} {
		b.Run(c.name, func(b *testing.B) {
			cfg := testConfig(&probe.Network{})
			cfg.ProbeFreshness = c.fresh
			a := newAllocator(b, newDB(b), cfg)
			for i, addr := range loopbackDevices(b, 4) {
				if _, err := a.CreateDevice(b.Context(), DeviceSpec{Name: fmt.Sprintf("d%d", i), Pool: "p", Address: addr, Probe: "tcp"}); err != nil {
					b.Fatal(err)
				}
			}
			req := AcquireRequest{Selector: Selector{Pool: "p"}, Owner: "bench"}
			var latencies []time.Duration
			cycle := func() {
				start := time.Now()
				l, err := a.Acquire(b.Context(), req)
				latencies = append(latencies, time.Since(start))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := a.Release(b.Context(), l.ID); err != nil {
					b.Fatal(err)
				}
			}
			// Warm up: every device acquired (and probed) once, so each
			// is fresh from then on when freshness is on.
			for range 4 {
				cycle()
			}
			latencies = latencies[:0]
			for b.Loop() {
				cycle()
			}
			reportPercentiles(b, latencies)
		})
	}
}
