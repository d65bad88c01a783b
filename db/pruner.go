package db

import (
	"context"
	"log/slog"
	"time"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/internal/testsignal"
)

// pruneBatch bounds one pruning statement: short transactions and few row
// locks, so pruning never gets in the way of acquires and releases.
const pruneBatch = 500

// pruner deletes lease history and device events older than retention,
// one pass every interval (jittered), off the request path. Every instance
// runs one; SKIP LOCKED keeps them from contending. A retention of 0
// keeps history forever: the pruner does not run.
type pruner struct {
	q         *dbsqlc.Queries
	interval  time.Duration
	retention time.Duration
	log       *slog.Logger
	// passed carries, for tests, how many rows each pass deleted.
	passed testsignal.Signal[int]
	loop   loop
}

// Start runs a pass every interval until Stop (none when retention is 0).
func (p *pruner) Start(ctx context.Context) {
	if p.retention <= 0 {
		return
	}
	p.loop.start(ctx, func(ctx context.Context) {
		every(ctx, p.interval, func(ctx context.Context) {
			p.passed.Signal(p.prune(ctx, time.Now().Add(-p.retention), pruneBatch))
		})
	})
}

// Stop ends the passes and waits for the one running.
func (p *pruner) Stop() { p.loop.stop() }

// prune deletes, batch by batch, the leases that ended before cutoff and
// the device events older than it, and reports how many rows it deleted.
func (p *pruner) prune(ctx context.Context, cutoff time.Time, batch int) int {
	leases := p.pruneTable(ctx, "lease history", batch, func() (int64, error) {
		return p.q.PruneHistory(ctx, dbsqlc.PruneHistoryParams{Cutoff: cutoff, Batch: int32(batch)})
	})
	events := p.pruneTable(ctx, "device events", batch, func() (int64, error) {
		return p.q.PruneDeviceEvents(ctx, dbsqlc.PruneDeviceEventsParams{Cutoff: cutoff, Batch: int32(batch)})
	})
	if leases+events > 0 {
		p.log.Info("pruned history", "leases", leases, "device_events", events, "before", cutoff.UTC().Format(time.RFC3339))
	}
	return leases + events
}

// pruneTable runs one pruning statement until it deletes less than a
// full batch.
func (p *pruner) pruneTable(ctx context.Context, what string, batch int, deleteBatch func() (int64, error)) int {
	total := 0
	for ctx.Err() == nil {
		n, err := deleteBatch()
		if err != nil {
			if ctx.Err() == nil {
				p.log.Warn("pruning failed; trying again next time", "what", what, "err", err)
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
