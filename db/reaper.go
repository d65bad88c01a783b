package db

import (
	"context"
	"time"
)

// reapBatch bounds one reaper statement; a backlog is drained batch by batch.
const reapBatch = 100

// runReaper ends expired leases every ReapInterval (jittered). Every
// instance runs one; SKIP LOCKED and the released_at guard in the query make
// each expiry happen exactly once. Freed devices wake waiters through the
// notifier, after the reaping statement commits.
func (a *Allocator) runReaper(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(jitter(a.cfg.ReapInterval)):
		}
		a.reap(ctx)
	}
}

// reap ends every lease that has expired by the database clock and reports
// how many it ended.
func (a *Allocator) reap(ctx context.Context) int {
	total := 0
	for ctx.Err() == nil {
		rows, err := a.q.ReapExpiredLeases(ctx, reapBatch)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("reaper failed", "err", err)
			}
			return total
		}
		for _, r := range rows {
			a.log.Info("lease expired", "lease", r.ID, "device", r.DeviceName, "pool", r.Pool, "owner", r.Owner)
			a.announceFreed(r.Pool, r.FreedDeviceID, r.FreedLabels, r.FreedState)
		}
		total += len(rows)
		if len(rows) > 0 {
			a.cfg.Observer.LeasesReaped(len(rows))
		}
		if len(rows) < reapBatch {
			return total
		}
	}
	return total
}
