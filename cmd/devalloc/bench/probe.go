package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// ProbeOptions configure Probe. Zero fields take the defaults named.
type ProbeOptions struct {
	// Instances are the servers; only the first is used (one client).
	Instances *Instances
	// DB is the instances' database, for cleanup.
	DB *pgxpool.Pool
	// Cycles are the measured acquire → release cycles per probe kind;
	// default 500.
	Cycles int
	// Warmup cycles per kind run unmeasured first; default 50.
	Warmup int
	// Progress shows the run; nil for none.
	Progress *Progress
}

// Probe measures what a tcp probe adds to an acquire: one client acquires
// and releases, alternating between a pool whose device has probe none and
// one whose device has a tcp probe to a loopback listener the bench runs
// (it accepts and closes, all a probe needs). Alternating cycle by cycle
// exposes both kinds to the same drift on a shared machine. Fresh is left
// nil.
func Probe(ctx context.Context, o ProbeOptions) (*ProbeResult, error) {
	o.Cycles = cmpOr(o.Cycles, 500)
	o.Warmup = cmpOr(o.Warmup, 50)
	if o.Instances == nil || o.Instances.Len() == 0 || o.DB == nil {
		return nil, errors.New("probe: Instances and DB are required")
	}
	dev, err := startLoopbackDevice()
	if err != nil {
		return nil, fmt.Errorf("probe: %w", err)
	}
	defer dev.Close()
	c := newClient(o.Instances.Key(), 1)
	defer c.close()
	none, tcp := newPoolName("probe-none"), newPoolName("probe-tcp")
	res, err := probeRun(ctx, o, c, none, tcp, dev.Addr())
	for _, pool := range []string{none, tcp} {
		if derr := dropPool(o.DB, pool); err == nil {
			err = derr
		}
	}
	if err != nil {
		return nil, fmt.Errorf("probe: %w", err)
	}
	return res, nil
}

func probeRun(ctx context.Context, o ProbeOptions, c *client, nonePool, tcpPool, addr string) (*ProbeResult, error) {
	base := o.Instances.URL(0)
	if err := registerDevices(ctx, c, base, nonePool, 1, "none", addr, nil); err != nil {
		return nil, err
	}
	if err := registerDevices(ctx, c, base, tcpPool, 1, "tcp", addr, nil); err != nil {
		return nil, err
	}
	bodies := [2][]byte{
		encode(acquireRequest{Pool: nonePool, TTLSeconds: 300, Holder: "devalloc-bench"}),
		encode(acquireRequest{Pool: tcpPool, TTLSeconds: 300, Holder: "devalloc-bench"}),
	}
	var n atomic.Int64
	o.Progress.Begin("probe: none vs tcp", 0, func() string {
		return fmt.Sprintf("%d/%d cycles", n.Load(), 2*(o.Warmup+o.Cycles))
	})
	defer o.Progress.End()
	var samples [2][]time.Duration
	for i := range 2 * (o.Warmup + o.Cycles) {
		kind := i % 2
		t0 := time.Now()
		lease, err := c.acquire(ctx, base, bodies[kind])
		d := time.Since(t0)
		if err != nil {
			return nil, err
		}
		if err := releaseAnyway(ctx, c, base, lease.ID); err != nil {
			return nil, err
		}
		if i/2 >= o.Warmup {
			samples[kind] = append(samples[kind], d)
		}
		n.Add(1)
	}
	res := &ProbeResult{None: Summarize(samples[0]), TCP: Summarize(samples[1])}
	// Both are whole microseconds; rounding drops float noise (0.45000000000000007).
	res.OverheadP50 = math.Round((res.TCP.P50-res.None.P50)*1000) / 1000
	return res, nil
}
