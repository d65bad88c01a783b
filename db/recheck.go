package db

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db/devalloctype"
	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/internal/jitter"
	"github.com/devalloc/devalloc/db/internal/testsignal"
	"github.com/devalloc/devalloc/db/wake"
)

// rechecker looks, about once per interval (jittered) and whenever asked
// (after a listener reconnect or a heartbeat gap, when notifications may
// have been missed), for what the wake-ups may have lost: rows stranded in
// line, waiters served without hearing of it, and idle devices that fit
// the selectors waiting here, pool by pool, waking waiters as if each had
// been notified. One query per pool, however many waiters there are.
type rechecker struct {
	q        *dbsqlc.Queries
	hub      *wake.Hub
	interval time.Duration
	log      *slog.Logger
	// clearStranded gives back what stranded rows were handed (the
	// Allocator's; see strandedWaiters).
	clearStranded func(context.Context)
	// now asks for an immediate pass; capacity 1, so asks coalesce.
	now chan struct{}
	// queries counts the re-checker's queries (tests hold it to one per
	// pool and pass).
	queries atomic.Int64
	// passed is signalled, for tests, after each pass.
	passed testsignal.Signal[struct{}]
	loop   loop
}

func newRechecker(q *dbsqlc.Queries, hub *wake.Hub, interval time.Duration, log *slog.Logger, clearStranded func(context.Context)) *rechecker {
	return &rechecker{q: q, hub: hub, interval: interval, log: log, clearStranded: clearStranded, now: make(chan struct{}, 1)}
}

// Start runs a pass every interval, and at once when asked, until Stop.
func (r *rechecker) Start(ctx context.Context) { r.loop.start(ctx, r.run) }

// Stop ends the passes and waits for the one running.
func (r *rechecker) Stop() { r.loop.stop() }

// request asks for a full pass as soon as possible.
func (r *rechecker) request() {
	select {
	case r.now <- struct{}{}:
	default:
	}
}

func (r *rechecker) run(ctx context.Context) {
	timer := time.NewTimer(jitter.Spread(r.interval))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-r.now:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
		r.pass(ctx)
		timer.Reset(jitter.Spread(r.interval))
	}
}

// pass runs one re-check: stranded rows first, then the waiters here that
// were served (or dropped) without the news reaching them, then the pools.
func (r *rechecker) pass(ctx context.Context) {
	defer r.passed.Signal(struct{}{})
	r.clearStranded(ctx)
	r.recheckServed(ctx)
	for pool, selectors := range r.hub.WaitingSelectors() {
		if !r.recheckPool(ctx, pool, selectors) {
			return
		}
	}
}

// recheckPool wakes waiters here for the idle devices of the pool that fit
// their selectors: for each selector, one device it fits, found however
// many idle devices fit nobody. A woken waiter runs the pool's dispatch,
// which serves the whole line. One query, whatever the number of waiters
// or selectors; false when it failed.
func (r *rechecker) recheckPool(ctx context.Context, pool string, selectors []Labels) bool {
	r.queries.Add(1)
	rows, err := r.q.IdleDevicesFitting(ctx, dbsqlc.IdleDevicesFittingParams{
		Pool:      pool,
		Selectors: encodeSelectors(selectors),
	})
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("re-check of idle devices failed", "pool", pool, "err", err)
		}
		return false
	}
	for _, raw := range rows {
		ev := wake.IdleEvent{Pool: pool}
		if labels, err := devalloctype.DecodeLabels(raw); err == nil {
			ev.Labels, ev.LabelsKnown = labels, true
		}
		r.hub.Notify(ev)
	}
	return true
}

// encodeSelectors renders label selectors as one JSON array of objects.
func encodeSelectors(selectors []Labels) []byte {
	out := []byte{'['}
	for i, sel := range selectors {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, sel.JSON()...)
	}
	return append(out, ']')
}

// recheckServed wakes, as served, the waiters here whose rows left the line
// without them hearing of it (a lost notification): one query per pass for
// all of them. Each then reads its leases (or learns it has none).
func (r *rechecker) recheckServed(ctx context.Context) {
	ids := r.hub.QueuedIDs()
	if len(ids) == 0 {
		return
	}
	r.queries.Add(1)
	still, err := r.q.WaitersStillQueued(ctx, ids)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("re-check of the line failed", "err", err)
		}
		return
	}
	queued := make(map[uuid.UUID]bool, len(still))
	for _, id := range still {
		queued[id] = true
	}
	for _, id := range ids {
		if !queued[id] {
			r.hub.Served(id, nil)
		}
	}
}
