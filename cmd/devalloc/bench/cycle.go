package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// CycleOptions configure Cycle (and, through SweepOptions, Sweep). Zero
// fields take the defaults named.
type CycleOptions struct {
	// Instances are the servers; client i talks to instance i mod Len.
	Instances *Instances
	// DB is the instances' database: for connection counts and cleanup.
	DB *pgxpool.Pool
	// Clients run acquire → release loops concurrently; default 32.
	Clients int
	// Devices are registered in a fresh pool; default 1000.
	Devices int
	// Probe is the devices' probe kind: "none" (default) or "tcp" (to a
	// loopback listener the bench runs).
	Probe string
	// WaitSeconds is each acquire's wait_seconds; default 5, so clients
	// that outnumber the devices wait instead of spinning on 503s.
	WaitSeconds int
	// NoWait sends wait_seconds 0 instead; a 503 then counts as an error.
	NoWait bool
	// Duration is the length of each devalloc run and each floor run;
	// default 10 s.
	Duration time.Duration
	// Rounds of devalloc run then floor run; default 3.
	Rounds int
	// Warmup is an unmeasured devalloc run first (connections, caches);
	// default 1 s, negative for none.
	Warmup time.Duration
	// Floor, if set, runs the bare-SQL floor with the same clients for d
	// and returns its cycles per second; it runs after each devalloc run.
	Floor func(ctx context.Context, clients int, d time.Duration) (float64, error)
	// Progress shows the runs; nil for none.
	Progress *Progress
}

func (o CycleOptions) withDefaults() CycleOptions {
	o.Clients = cmpOr(o.Clients, 32)
	o.Devices = cmpOr(o.Devices, 1000)
	if o.Probe == "" {
		o.Probe = "none"
	}
	o.WaitSeconds = cmpOr(o.WaitSeconds, 5)
	if o.NoWait {
		o.WaitSeconds = 0
	}
	o.Duration = cmpOr(o.Duration, 10*time.Second)
	o.Rounds = cmpOr(o.Rounds, 3)
	if o.Warmup == 0 {
		o.Warmup = time.Second
	}
	return o
}

func (o CycleOptions) check() error {
	if o.Instances == nil || o.Instances.Len() == 0 || o.DB == nil {
		return errors.New("Instances and DB are required")
	}
	if o.Probe != "none" && o.Probe != "tcp" {
		return fmt.Errorf("probe %q: want none or tcp", o.Probe)
	}
	return nil
}

// Cycle measures throughput: o.Clients clients each loop acquire → release
// on o.Devices devices for o.Duration, in o.Rounds rounds interleaved with
// o.Floor, so that drift on a shared machine hits both alike. Rates are
// medians over the rounds; latencies cover every measured cycle.
func Cycle(ctx context.Context, o CycleOptions) (*CycleResult, error) {
	o = o.withDefaults()
	if err := o.check(); err != nil {
		return nil, fmt.Errorf("cycle: %w", err)
	}
	b, err := newCycleBench(ctx, o, o.Clients)
	if err != nil {
		return nil, fmt.Errorf("cycle: %w", err)
	}
	res := &CycleResult{
		Instances: o.Instances.Len(), Clients: o.Clients, Devices: o.Devices, Probe: o.Probe,
		DeviceLabels: FarmLabelsDescription, Seconds: o.Duration.Seconds(), Rounds: o.Rounds,
	}
	err = b.measure(ctx, res)
	if cerr := b.close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("cycle: %w", err)
	}
	return res, nil
}

// measure runs the warm-up and the rounds and fills res.
func (b *cycleBench) measure(ctx context.Context, res *CycleResult) error {
	o := b.o
	if err := b.warmup(ctx, o.Clients); err != nil {
		return err
	}
	var acq, rel Recorder
	for r := range o.Rounds {
		label := fmt.Sprintf("cycle %d clients, round %d/%d", o.Clients, r+1, o.Rounds)
		st, err := b.run(ctx, label, o.Clients, o.Duration, &acq, &rel)
		if err != nil {
			return err
		}
		res.RoundsCPS = append(res.RoundsCPS, st.perSec())
		res.Errors += st.errors
		res.DBConnections = max(res.DBConnections, st.dbConns)
		if o.Floor != nil {
			raw, err := b.floor(ctx, o.Clients)
			if err != nil {
				return err
			}
			res.RoundsRawCPS = append(res.RoundsRawCPS, raw)
		}
	}
	res.CyclesPerSec = Median(res.RoundsCPS)
	res.RawCyclesPerSec = Median(res.RoundsRawCPS)
	if res.RawCyclesPerSec > 0 {
		res.Ratio = res.CyclesPerSec / res.RawCyclesPerSec
	}
	res.Acquire, res.Release = acq.Summary(), rel.Summary()
	return nil
}

// warmup is an unmeasured run.
func (b *cycleBench) warmup(ctx context.Context, clients int) error {
	if b.o.Warmup <= 0 {
		return nil
	}
	var acq, rel Recorder
	_, err := b.run(ctx, fmt.Sprintf("cycle %d clients, warm-up", clients), clients, b.o.Warmup, &acq, &rel)
	return err
}

// floor runs the caller's floor function for one round.
func (b *cycleBench) floor(ctx context.Context, clients int) (float64, error) {
	b.o.Progress.Begin(fmt.Sprintf("floor %d clients", clients), b.o.Duration, nil)
	defer b.o.Progress.End()
	raw, err := b.o.Floor(ctx, clients, b.o.Duration)
	if err != nil {
		return 0, fmt.Errorf("floor at %d clients: %w", clients, err)
	}
	return raw, nil
}

// cycleBench is a pool of devices ready for acquire → release loops.
type cycleBench struct {
	o    CycleOptions
	c    *client
	pool string
	body []byte          // the acquire request, encoded once
	dev  *loopbackDevice // the tcp probe's target, when Probe is tcp
}

// newCycleBench registers o.Devices devices in a fresh pool, for up to
// maxClients concurrent clients.
func newCycleBench(ctx context.Context, o CycleOptions, maxClients int) (*cycleBench, error) {
	b := &cycleBench{
		o:    o,
		c:    newClient(o.Instances.Key(), maxClients),
		pool: newPoolName("cycle"),
	}
	// TTL bounds a lease whose release was lost (a run cut short), so the
	// device comes back by itself.
	b.body = encode(acquireRequest{Pool: b.pool, WaitSeconds: o.WaitSeconds, TTLSeconds: 300, Holder: "devalloc-bench"})
	address := "127.0.0.1:9" // never dialled with probe none
	if o.Probe == "tcp" {
		dev, err := startLoopbackDevice()
		if err != nil {
			b.c.close()
			return nil, err
		}
		b.dev, address = dev, dev.Addr()
	}
	o.Progress.Begin(fmt.Sprintf("registering %d devices", o.Devices), 0, nil)
	err := registerDevices(ctx, b.c, o.Instances.URL(0), b.pool, o.Devices, o.Probe, address, FarmLabels)
	o.Progress.End()
	if err != nil {
		_ = b.close()
		return nil, err
	}
	return b, nil
}

// close deletes the pool and stops what newCycleBench started.
func (b *cycleBench) close() error {
	b.c.close()
	if b.dev != nil {
		b.dev.Close()
	}
	return dropPool(b.o.DB, b.pool)
}

// runStats is one run's outcome.
type runStats struct {
	cycles  int // completed within the run
	errors  int
	elapsed time.Duration
	dbConns int // peak connections the instances held
}

func (s runStats) perSec() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.cycles) / s.elapsed.Seconds()
}

// errorBackoff keeps a client that gets errors (a server gone, a 503)
// from spinning on them and starving the others of CPU.
const errorBackoff = 10 * time.Millisecond

// run has clients clients loop acquire → release for d, recording the
// latencies of cycles that complete within d. A cycle in flight at the
// deadline completes (its device must go back) but does not count.
func (b *cycleBench) run(ctx context.Context, label string, clients int, d time.Duration, acq, rel *Recorder) (runStats, error) {
	mon, err := openMonitor(ctx, b.o.DB)
	if err != nil {
		return runStats{}, err
	}
	defer mon.close()
	sampler := startConnSampler(ctx, mon, b.o.Instances.AppNames())

	var done, failed atomic.Int64
	var firstErr firstError
	b.o.Progress.Begin(label, d, func() string { return fmt.Sprintf("%d cycles", done.Load()) })
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for i := range clients {
		base := b.o.Instances.URL(i % b.o.Instances.Len())
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(deadline) {
				t0 := time.Now()
				lease, err := b.c.acquire(ctx, base, b.body)
				t1 := time.Now()
				if err != nil {
					failed.Add(1)
					firstErr.set(err)
					time.Sleep(errorBackoff)
					continue
				}
				err = releaseAnyway(ctx, b.c, base, lease.ID)
				t2 := time.Now()
				if err != nil {
					failed.Add(1)
					firstErr.set(err)
					continue
				}
				if t2.Before(deadline) {
					acq.Add(t1.Sub(t0))
					rel.Add(t2.Sub(t1))
					done.Add(1)
				}
			}
		})
	}
	wg.Wait()
	b.o.Progress.End()
	peak, _, serr := sampler.stop()
	st := runStats{cycles: int(done.Load()), errors: int(failed.Load()), elapsed: d, dbConns: peak}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	if serr != nil {
		return st, serr
	}
	if st.cycles == 0 && st.errors > 0 {
		return st, fmt.Errorf("%s: no cycle completed; first error: %w", label, firstErr.get())
	}
	return st, nil
}
