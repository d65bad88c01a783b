package db

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db/devalloctype"
	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/internal/jitter"
	"github.com/devalloc/devalloc/db/wake"
)

// runRechecker looks, about once per RecheckInterval, for idle devices that
// fit the selectors waiting here, pool by pool, and wakes waiters as if
// each had been notified. It covers lost notifications: one query per pool
// and instance, however many waiters there are.
func (a *Allocator) runRechecker(ctx context.Context) {
	timer := time.NewTimer(jitter.Spread(a.cfg.RecheckInterval))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-a.recheckNow:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
		a.recheck(ctx)
		timer.Reset(jitter.Spread(a.cfg.RecheckInterval))
	}
}

// recheck runs one pass over the pools with waiters, looks for waiters
// here that were served (or dropped) without the news reaching them, and
// removes stranded rows (see strandedWaiters).
func (a *Allocator) recheck(ctx context.Context) {
	a.clearStranded(ctx)
	a.recheckServed(ctx)
	for pool, selectors := range a.hub.WaitingSelectors() {
		if !a.recheckPool(ctx, pool, selectors) {
			return
		}
	}
}

// recheckPool wakes waiters here for the idle devices of the pool that fit
// their selectors: for each selector, one device it fits, found however
// many idle devices fit nobody. A woken waiter runs the pool's dispatch,
// which serves the whole line. One query, whatever the number of waiters
// or selectors; false when it failed.
func (a *Allocator) recheckPool(ctx context.Context, pool string, selectors []Labels) bool {
	a.recheckQueries.Add(1)
	rows, err := a.q.IdleDevicesFitting(ctx, dbsqlc.IdleDevicesFittingParams{
		Pool:      pool,
		Selectors: encodeSelectors(selectors),
	})
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("re-check of idle devices failed", "pool", pool, "err", err)
		}
		return false
	}
	for _, raw := range rows {
		ev := wake.IdleEvent{Pool: pool}
		if labels, err := devalloctype.DecodeLabels(raw); err == nil {
			ev.Labels, ev.LabelsKnown = labels, true
		}
		a.hub.Notify(ev)
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
func (a *Allocator) recheckServed(ctx context.Context) {
	ids := a.hub.QueuedIDs()
	if len(ids) == 0 {
		return
	}
	a.recheckQueries.Add(1)
	still, err := a.q.WaitersStillQueued(ctx, ids)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("re-check of the line failed", "err", err)
		}
		return
	}
	queued := make(map[uuid.UUID]bool, len(still))
	for _, id := range still {
		queued[id] = true
	}
	for _, id := range ids {
		if !queued[id] {
			a.hub.Served(id, nil)
		}
	}
}
