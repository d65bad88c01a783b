package db

import (
	"context"
	"time"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/internal/jitter"
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
		case <-time.After(jitter.Spread(a.cfg.PruneInterval)):
		}
		a.prune(ctx, time.Now().Add(-a.cfg.HistoryRetention), pruneBatch)
	}
}

// prune deletes, batch by batch, the leases that ended before cutoff and
// the device events older than it, and reports how many rows it deleted.
func (a *Allocator) prune(ctx context.Context, cutoff time.Time, batch int) int {
	leases := a.pruneTable(ctx, "lease history", batch, func() (int64, error) {
		return a.q.PruneHistory(ctx, dbsqlc.PruneHistoryParams{Cutoff: cutoff, Batch: int32(batch)})
	})
	events := a.pruneTable(ctx, "device events", batch, func() (int64, error) {
		return a.q.PruneDeviceEvents(ctx, dbsqlc.PruneDeviceEventsParams{Cutoff: cutoff, Batch: int32(batch)})
	})
	if leases+events > 0 {
		a.log.Info("pruned history", "leases", leases, "device_events", events, "before", cutoff.UTC().Format(time.RFC3339))
	}
	return leases + events
}

// pruneTable runs one pruning statement until it deletes less than a
// full batch.
func (a *Allocator) pruneTable(ctx context.Context, what string, batch int, deleteBatch func() (int64, error)) int {
	total := 0
	for ctx.Err() == nil {
		n, err := deleteBatch()
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("pruning failed; trying again next time", "what", what, "err", err)
			}
			break
		}
		total += int(n)
		if n < int64(batch) {
			break
		}
	}
	return total
}
