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

// HandoffOptions configure Handoff. Zero fields take the defaults named.
type HandoffOptions struct {
	// Instances are the servers; waiter i talks to instance i mod Len.
	Instances *Instances
	// DB is the instances' database: for commit counts and cleanup.
	DB *pgxpool.Pool
	// Waiters are the clients, each looping acquire (waiting) → hold →
	// release; default 200.
	Waiters int
	// Devices are registered in a fresh pool (probe none); default 20.
	Devices int
	// Hold is how long a client keeps each lease; default 50 ms.
	Hold time.Duration
	// WaitSeconds is each acquire's wait_seconds; default 30.
	WaitSeconds int
	// Duration is the measured window; default 10 s.
	Duration time.Duration
	// Warmup runs before the window, so every client is already queued
	// when it opens; default 1 s.
	Warmup time.Duration
	// Progress shows the run; nil for none.
	Progress *Progress
}

func (o HandoffOptions) withDefaults() HandoffOptions {
	o.Waiters = cmpOr(o.Waiters, 200)
	o.Devices = cmpOr(o.Devices, 20)
	o.Hold = cmpOr(o.Hold, 50*time.Millisecond)
	o.WaitSeconds = cmpOr(o.WaitSeconds, 30)
	o.Duration = cmpOr(o.Duration, 10*time.Second)
	o.Warmup = cmpOr(o.Warmup, time.Second)
	return o
}

// Handoff measures how fast a released device reaches a client that is
// already waiting for it, when waiters outnumber devices: from the moment
// the holder sends its release to the moment the waiter reads its 201,
// across instances (the waiter may wait at another instance than the
// releaser's). Handoffs and commits are counted over the same window
// after the warm-up, so CommitsPerHandoff is a steady-state ratio.
func Handoff(ctx context.Context, o HandoffOptions) (*HandoffResult, error) {
	o = o.withDefaults()
	if o.Instances == nil || o.Instances.Len() == 0 || o.DB == nil {
		return nil, errors.New("handoff: Instances and DB are required")
	}
	h := &handoffRun{o: o, c: newClient(o.Instances.Key(), o.Waiters), pool: newPoolName("handoff")}
	defer h.c.close()
	res, err := h.measure(ctx)
	if derr := dropPool(o.DB, h.pool); err == nil {
		err = derr
	}
	if err != nil {
		return nil, fmt.Errorf("handoff: %w", err)
	}
	return res, nil
}

// handoffRun is one Handoff scenario.
type handoffRun struct {
	o    HandoffOptions
	c    *client
	pool string

	start time.Time // the clients' clock starts here

	acquires, failed atomic.Int64
	firstErr         firstError
}

func (h *handoffRun) measure(ctx context.Context) (*HandoffResult, error) {
	o := h.o
	o.Progress.Begin(fmt.Sprintf("registering %d devices", o.Devices), 0, nil)
	err := registerDevices(ctx, h.c, o.Instances.URL(0), h.pool, o.Devices, "none", "127.0.0.1:9", FarmLabels)
	o.Progress.End()
	if err != nil {
		return nil, err
	}
	mon, err := openMonitor(ctx, o.DB)
	if err != nil {
		return nil, err
	}
	defer mon.close()

	// Clients stop starting cycles once stop closes; the window ends then
	// too. A client's cycle in flight completes, so every device is
	// released and every waiter served before the clients return.
	stop := make(chan struct{})
	body := encode(acquireRequest{Pool: h.pool, WaitSeconds: o.WaitSeconds, TTLSeconds: 300, Holder: "devalloc-bench"})
	h.start = time.Now()
	start := h.start
	acqs := make([][]acquireEvent, o.Waiters)
	rels := make([][]releaseEvent, o.Waiters)
	var wg sync.WaitGroup
	for i := range o.Waiters {
		base := o.Instances.URL(i % o.Instances.Len())
		wg.Go(func() { acqs[i], rels[i] = h.client(ctx, base, body, start, stop) })
	}

	o.Progress.Begin(fmt.Sprintf("handoff %d waiters, %d devices", o.Waiters, o.Devices), o.Warmup+o.Duration,
		func() string { return fmt.Sprintf("%d acquires", h.acquires.Load()) })
	from, c0, w0, err := h.xactsAt(ctx, mon, start.Add(o.Warmup))
	var to time.Duration
	var c1, w1 int64
	if err == nil {
		to, c1, w1, err = h.xactsAt(ctx, mon, start.Add(o.Warmup+o.Duration))
	}
	close(stop)
	wg.Wait()
	o.Progress.End()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	var allAcq []acquireEvent
	var allRel []releaseEvent
	for i := range acqs {
		allAcq = append(allAcq, acqs[i]...)
		allRel = append(allRel, rels[i]...)
	}
	hs := handoffsWithin(matchHandoffs(allAcq, allRel), from, to)
	lat := make([]time.Duration, len(hs))
	for i, x := range hs {
		lat[i] = x.latency()
	}
	res := &HandoffResult{
		Instances: o.Instances.Len(), Waiters: o.Waiters, Devices: o.Devices, DeviceLabels: FarmLabelsDescription,
		HoldMS: ms(o.Hold), Seconds: (to - from).Seconds(), Handoffs: len(hs),
		Handoff: Summarize(lat), Errors: int(h.failed.Load()),
	}
	if len(hs) == 0 {
		return nil, fmt.Errorf("no handoff in %s (errors: %d, first: %v)", o.Duration, res.Errors, h.firstErr.get())
	}
	res.CommitsPerHandoff = float64(c1-c0) / float64(len(hs))
	res.WritesPerHandoff = float64(w1-w0) / float64(len(hs))
	return res, nil
}

// xactsAt waits until at, then reads the database's commit count and next
// transaction id; it returns the time of the reading on the clients' clock.
func (h *handoffRun) xactsAt(ctx context.Context, mon *dbMonitor, at time.Time) (time.Duration, int64, int64, error) {
	t := time.NewTimer(time.Until(at))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return 0, 0, 0, ctx.Err()
	case <-t.C:
	}
	now := time.Since(h.start)
	commits, _, err := mon.xacts(ctx)
	if err != nil {
		return now, 0, 0, err
	}
	xid, err := mon.xids(ctx)
	return now, commits, xid, err
}

// client loops acquire → hold → release until stop, logging its events.
func (h *handoffRun) client(ctx context.Context, base string, body []byte, start time.Time, stop <-chan struct{}) ([]acquireEvent, []releaseEvent) {
	var acqs []acquireEvent
	var rels []releaseEvent
	hold := time.NewTimer(time.Hour)
	defer hold.Stop()
	for ctx.Err() == nil {
		select {
		case <-stop:
			return acqs, rels
		default:
		}
		sent := time.Since(start)
		lease, err := h.c.acquire(ctx, base, body)
		got := time.Since(start)
		if err != nil {
			if ctx.Err() != nil {
				break // abandoned, not failed
			}
			h.failed.Add(1)
			h.firstErr.set(err)
			time.Sleep(errorBackoff)
			continue
		}
		h.acquires.Add(1)
		acqs = append(acqs, acquireEvent{device: lease.Device.Name, sent: sent, got: got})
		hold.Reset(h.o.Hold)
		select {
		case <-ctx.Done():
		case <-hold.C:
		}
		relSent := time.Since(start)
		if err := releaseAnyway(ctx, h.c, base, lease.ID); err != nil {
			h.failed.Add(1)
			h.firstErr.set(err)
			continue
		}
		rels = append(rels, releaseEvent{device: lease.Device.Name, sent: relSent})
	}
	return acqs, rels
}
