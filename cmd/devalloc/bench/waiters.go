package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// WaitersOptions configure Waiters. Zero fields take the defaults named.
type WaitersOptions struct {
	// Instances are the servers; waiter i waits at instance i mod Len.
	// Spawned instances need --max-waiting-per-key of at least
	// Waiters/Len (Spawn's default is far above).
	Instances *Instances
	// DB is the instances' database.
	DB *pgxpool.Pool
	// Waiters is how many long-polls wait at once; default 10000. The
	// bench holds one connection per waiter, so the process needs that many
	// file descriptors (Go raises the soft limit to the hard one).
	Waiters int
	// LoadAt are the waiter counts at which the database load is
	// measured, ascending; default Waiters/10 and Waiters. Waiters is
	// added when missing: memory and connections are read there.
	LoadAt []int
	// RampPerSec bounds how fast waiters are started; default 2000.
	RampPerSec int
	// LoadWindow is how long each load measurement lasts; default 5 s.
	LoadWindow time.Duration
	// Settle is waited before each load window. PostgreSQL publishes a
	// backend's transaction counts up to ten seconds late once it goes
	// idle, so the burst of starting the waiters would otherwise land in
	// the window; default 11 s, negative for none (tests).
	Settle time.Duration
	// Timeout bounds the whole scenario; default 3 min.
	Timeout time.Duration
	// Progress shows the phases; nil for none.
	Progress *Progress
}

func (o WaitersOptions) withDefaults() WaitersOptions {
	o.Waiters = cmpOr(o.Waiters, 10_000)
	if len(o.LoadAt) == 0 && o.Waiters >= 10 {
		o.LoadAt = []int{o.Waiters / 10}
	}
	o.LoadAt = slices.Clone(o.LoadAt)
	if !slices.Contains(o.LoadAt, o.Waiters) {
		o.LoadAt = append(o.LoadAt, o.Waiters)
	}
	slices.Sort(o.LoadAt)
	o.RampPerSec = cmpOr(o.RampPerSec, 2000)
	o.LoadWindow = cmpOr(o.LoadWindow, 5*time.Second)
	if o.Settle == 0 {
		o.Settle = 11 * time.Second
	}
	o.Timeout = cmpOr(o.Timeout, 3*time.Minute)
	return o
}

func (o WaitersOptions) check() error {
	if o.Instances == nil || o.Instances.Len() == 0 || o.DB == nil {
		return errors.New("Instances and DB are required")
	}
	if o.LoadAt[0] < 1 || o.LoadAt[len(o.LoadAt)-1] > o.Waiters {
		return fmt.Errorf("LoadAt %v: want counts between 1 and Waiters (%d)", o.LoadAt, o.Waiters)
	}
	return nil
}

// maxWaitSeconds is serve's default --max-wait; a longer wait_seconds is
// refused.
const maxWaitSeconds = 900

// serveDevices is how many devices are added to serve the waiters at the
// end: each served waiter releases at once, so a few hundred devices pass
// through all of them without a burst of ten thousand simultaneous
// acquires.
const serveDevices = 500

// Waiters measures what many concurrent long-polls cost: W acquires wait
// on a pool whose one device is leased (so their selector can be met and
// they wait rather than fail), spread over the instances. Once all wait
// it reads each instance's memory growth per waiter and the database
// connections it held, and the database's transactions per second at
// each LoadAt count (flat means the periodic re-check is per instance and
// pool, not per waiter). Then devices are added so that every waiter is
// served; all must end with a 201.
func Waiters(ctx context.Context, o WaitersOptions) (*WaitersResult, error) {
	o = o.withDefaults()
	if err := o.check(); err != nil {
		return nil, fmt.Errorf("waiters: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	w := &waitersRun{o: o, c: newClient(o.Instances.Key(), o.Waiters), pool: newPoolName("waiters")}
	res, err := w.measure(ctx)
	// Whatever happened, no waiter may outlive the scenario.
	cancel()
	w.wg.Wait()
	w.c.close()
	if derr := dropPool(o.DB, w.pool); err == nil {
		err = derr
	}
	if err != nil {
		return nil, fmt.Errorf("waiters: %w", err)
	}
	return res, nil
}

// waitersRun is one Waiters scenario.
type waitersRun struct {
	o    WaitersOptions
	c    *client
	pool string
	body []byte

	wg                      sync.WaitGroup // the waiters
	started, served, failed atomic.Int64
	firstErr                firstError
	blockerID               string
}

func (w *waitersRun) measure(ctx context.Context) (*WaitersResult, error) {
	o := w.o
	n := o.Instances.Len()
	res := &WaitersResult{Instances: n, Waiters: o.Waiters}
	if err := w.setup(ctx); err != nil {
		return nil, err
	}
	rssBefore, err := w.rss()
	if err != nil {
		return nil, err
	}
	mon, err := openMonitor(ctx, o.DB)
	if err != nil {
		return nil, err
	}
	defer mon.close()
	sampler := startConnSampler(ctx, mon, o.Instances.AppNames())
	perInstance, rssAfter, err := w.waitAndMeasure(ctx, mon, res)
	total, each, serr := sampler.stop()
	if err == nil {
		err = serr
	}
	if err != nil {
		return nil, err
	}
	res.ConnsPerInstance = []int{total}
	if o.Instances.Spawned() {
		res.ConnsPerInstance = make([]int, n)
		res.RSSPerWaiterBytes = make([]float64, n)
		for i := range n {
			res.ConnsPerInstance[i] = each[o.Instances.AppName(i)]
			if perInstance[i] > 0 {
				res.RSSPerWaiterBytes[i] = float64(rssAfter[i]-rssBefore[i]) / float64(perInstance[i])
			}
		}
	}

	if err := w.serve(ctx); err != nil {
		return nil, err
	}
	res.Served, res.Errors = int(w.served.Load()), int(w.failed.Load())
	return res, nil
}

// waitAndMeasure starts the waiters step by step, measures the database
// load at each step, and returns each instance's waiters and memory at the
// last.
func (w *waitersRun) waitAndMeasure(ctx context.Context, mon *dbMonitor, res *WaitersResult) (perInstance []int, rss []int64, err error) {
	for _, count := range w.o.LoadAt {
		if perInstance, err = w.rampTo(ctx, count); err != nil {
			return nil, nil, err
		}
		load, err := w.load(ctx, mon, count)
		if err != nil {
			return nil, nil, err
		}
		res.Load = append(res.Load, load)
	}
	// Read after the last load window: the instances have held all their
	// waiters for a while, so their heaps have settled.
	if rss, err = w.rss(); err != nil {
		return nil, nil, err
	}
	return perInstance, rss, nil
}

// setup registers the pool's one device and leases it for the whole
// scenario: every waiter can be served by it, so none fails fast with a
// 422, and none is served before the end.
func (w *waitersRun) setup(ctx context.Context) error {
	o := w.o
	base := o.Instances.URL(0)
	if err := registerDevices(ctx, w.c, base, w.pool, 1, "none", "127.0.0.1:9", nil); err != nil {
		return err
	}
	ttl := int(o.Timeout/time.Second) + 60
	blocker, err := w.c.acquire(ctx, base, encode(acquireRequest{Pool: w.pool, TTLSeconds: ttl, Holder: "devalloc-bench blocker"}))
	if err != nil {
		return fmt.Errorf("lease the pool's device: %w", err)
	}
	w.blockerID = blocker.ID
	wait := min(int(o.Timeout/time.Second), maxWaitSeconds)
	w.body = encode(acquireRequest{Pool: w.pool, WaitSeconds: wait, TTLSeconds: 300, Holder: "devalloc-bench"})
	return nil
}

// rss reads every instance's resident memory (zeros for wrapped ones).
func (w *waitersRun) rss() ([]int64, error) {
	out := make([]int64, w.o.Instances.Len())
	for i := range out {
		var err error
		if out[i], err = w.o.Instances.RSS(i); err != nil {
			return nil, fmt.Errorf("instance %d: %w", i, err)
		}
	}
	return out, nil
}

// rampStep is how often the ramp starts a batch of waiters.
const rampStep = 10 * time.Millisecond

// rampTo starts waiters until count run, at most RampPerSec a second, and
// returns once the instances report them all waiting, with each
// instance's share.
func (w *waitersRun) rampTo(ctx context.Context, count int) ([]int, error) {
	o := w.o
	w.o.Progress.Begin(fmt.Sprintf("waiters: starting %d", count), 0, func() string {
		return fmt.Sprintf("%d/%d started", w.started.Load(), count)
	})
	defer w.o.Progress.End()
	perStep := max(1, o.RampPerSec*int(rampStep)/int(time.Second))
	tick := time.NewTicker(rampStep)
	defer tick.Stop()
	for int(w.started.Load()) < count {
		for range min(perStep, count-int(w.started.Load())) {
			i := int(w.started.Add(1)) - 1
			base := o.Instances.URL(i % o.Instances.Len())
			w.wg.Go(func() { w.wait(ctx, base) })
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("starting waiters: %w", ctx.Err())
		case <-tick.C:
		}
	}
	return w.allWaiting(ctx, count)
}

// wait is one waiter: a long-poll that must end with a 201, whose lease it
// then releases so the next waiter can have the device.
func (w *waitersRun) wait(ctx context.Context, base string) {
	lease, err := w.c.acquire(ctx, base, w.body)
	if err == nil {
		err = releaseAnyway(ctx, w.c, base, lease.ID)
	}
	if err != nil {
		if ctx.Err() == nil {
			w.failed.Add(1)
			w.firstErr.set(err)
		}
		return
	}
	w.served.Add(1)
}

// pollEvery is how often the instances are asked how many wait.
const pollEvery = 250 * time.Millisecond

// allWaiting polls GET /v1/pools at every instance until count waiters
// wait in total. A waiter that failed (a 429, a refused connection) would
// never wait, so the first failure ends the scenario.
func (w *waitersRun) allWaiting(ctx context.Context, count int) ([]int, error) {
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		if n := w.failed.Load(); n > 0 {
			return nil, fmt.Errorf("%d waiters failed; first: %w", n, w.firstErr.get())
		}
		per := make([]int, w.o.Instances.Len())
		total := 0
		for i := range per {
			n, err := w.c.waiting(ctx, w.o.Instances.URL(i), w.pool)
			if err != nil {
				return nil, fmt.Errorf("count waiters at instance %d: %w", i, err)
			}
			per[i] = n
			total += n
		}
		if total >= count {
			return per, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%d of %d waiters waiting: %w", total, count, ctx.Err())
		case <-tick.C:
		}
	}
}

// load measures the database's transactions per second while count
// waiters wait, after the statistics settle.
func (w *waitersRun) load(ctx context.Context, mon *dbMonitor, count int) (WaitLoad, error) {
	o := w.o
	o.Progress.Begin(fmt.Sprintf("waiters: %d waiting, load", count), max(o.Settle, 0)+o.LoadWindow, nil)
	defer o.Progress.End()
	if err := sleepCtx(ctx, o.Settle); err != nil {
		return WaitLoad{}, err
	}
	c0, r0, err := mon.xacts(ctx)
	if err != nil {
		return WaitLoad{}, err
	}
	t0 := time.Now()
	if err := sleepCtx(ctx, o.LoadWindow); err != nil {
		return WaitLoad{}, err
	}
	c1, r1, err := mon.xacts(ctx)
	if err != nil {
		return WaitLoad{}, err
	}
	rate := float64((c1-c0)+(r1-r0)) / time.Since(t0).Seconds()
	return WaitLoad{Waiters: count, XactsPerSec: rate}, nil
}

// serve adds devices to the pool and releases the blocking lease, so that
// every waiter gets a device, and waits until all waiters have ended. The
// devices go in with SQL: their insert trigger wakes the waiters just as a
// registration through the API would.
func (w *waitersRun) serve(ctx context.Context) error {
	o := w.o
	o.Progress.Begin(fmt.Sprintf("waiters: serving %d", o.Waiters), 0, func() string {
		return fmt.Sprintf("%d/%d served", w.served.Load(), o.Waiters)
	})
	defer o.Progress.End()
	_, err := o.DB.Exec(ctx, `
		INSERT INTO devalloc.devices (name, pool, address, probe)
		SELECT $1 || '-serve-' || i, $1, '127.0.0.1:9', 'none' FROM generate_series(1, $2::int) AS i`,
		w.pool, min(o.Waiters, serveDevices))
	if err != nil {
		return fmt.Errorf("add devices to serve the waiters: %w", err)
	}
	if err := releaseAnyway(ctx, w.c, o.Instances.URL(0), w.blockerID); err != nil {
		return fmt.Errorf("release the pool's first device: %w", err)
	}
	ended := make(chan struct{})
	go func() {
		w.wg.Wait()
		close(ended)
	}()
	// Waiters that fail now are counted in the result's Errors.
	select {
	case <-ended:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%d of %d waiters served: %w", w.served.Load(), o.Waiters, ctx.Err())
	}
}

// sleepCtx waits d (nothing when d <= 0) unless ctx ends first. It paces
// measurement windows; it is never used to wait for another goroutine.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
