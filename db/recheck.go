package db

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db/dbsqlc"
)

// maxRecheckRows bounds how many idle devices one re-check reads per pool.
const maxRecheckRows = 1000

// runRechecker re-reads, about once per RecheckInterval, the idle devices of
// every pool that has waiters here, and wakes waiters as if each had been
// notified. It covers lost notifications: one query per pool and instance,
// however many waiters there are.
func (a *Allocator) runRechecker(ctx context.Context) {
	timer := time.NewTimer(jitter(a.cfg.RecheckInterval))
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
		timer.Reset(jitter(a.cfg.RecheckInterval))
	}
}

// recheck runs one pass over the pools with waiters, looks for waiters
// here that were served (or dropped) without the news reaching them, and
// removes stranded rows (see strandedWaiters).
func (a *Allocator) recheck(ctx context.Context) {
	a.clearStranded(ctx)
	a.recheckServed(ctx)
	for pool, waiting := range a.hub.waitingPools() {
		a.recheckQueries.Add(1)
		rows, err := a.q.IdleDeviceLabels(ctx, dbsqlc.IdleDeviceLabelsParams{
			Pool:    pool,
			MaxRows: int32(min(waiting, maxRecheckRows)),
		})
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("re-check of idle devices failed", "pool", pool, "err", err)
			}
			return
		}
		for _, r := range rows {
			ev := idleEvent{Pool: pool}
			if labels, err := decodeLabels(r.Labels); err == nil {
				ev.Labels, ev.LabelsKnown = labels, true
			}
			a.hub.Notify(ev)
		}
	}
}

// recheckServed wakes, as served, the waiters here whose rows left the line
// without them hearing of it (a lost notification): one query per pass for
// all of them. Each then reads its leases (or learns it has none).
func (a *Allocator) recheckServed(ctx context.Context) {
	ids := a.hub.queuedIDs()
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
