package db

import (
	"context"
	"time"

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

// recheck runs one pass over the pools with waiters.
func (a *Allocator) recheck(ctx context.Context) {
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
