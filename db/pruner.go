package db

import (
	"context"
	"time"

	"github.com/devalloc/devalloc/db/dbsqlc"
)

// pruneBatch bounds one pruning statement: short transactions and few row
// locks, so pruning never gets in the way of acquires and releases.
const pruneBatch = 500

// runPruner deletes lease history older than HistoryRetention every
// PruneInterval (jittered), off the request path. Every instance runs one;
// SKIP LOCKED keeps them from contending.
func (a *Allocator) runPruner(ctx context.Context) {
	if a.cfg.HistoryRetention <= 0 {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(jitter(a.cfg.PruneInterval)):
		}
		a.prune(ctx, time.Now().Add(-a.cfg.HistoryRetention), pruneBatch)
	}
}

// prune deletes, batch by batch, the leases that ended before cutoff and
// reports how many it deleted.
func (a *Allocator) prune(ctx context.Context, cutoff time.Time, batch int) int {
	total := 0
	for ctx.Err() == nil {
		n, err := a.q.PruneHistory(ctx, dbsqlc.PruneHistoryParams{Cutoff: cutoff, Batch: int32(batch)})
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("pruning lease history failed; trying again next time", "err", err)
			}
			break
		}
		total += int(n)
		if n < int64(batch) {
			break
		}
	}
	if total > 0 {
		a.log.Info("pruned lease history", "deleted", total, "ended_before", cutoff.UTC().Format(time.RFC3339))
	}
	return total
}
