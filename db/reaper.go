package db

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/dbsqlc"
)

// reapBatch bounds one reaper statement; a backlog is drained batch by batch.
const reapBatch = 100

// runReaper ends expired leases every ReapInterval (jittered). Every
// instance runs one; EndLease's released_at guard makes each expiry happen
// exactly once. A freed device goes to the line in the same statement, or
// wakes waiters through the notifier after it commits.
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
// how many it ended. Each lease ends in its own statement (EndLease), which
// hands its device to the first waiter in line it fits.
func (a *Allocator) reap(ctx context.Context) int {
	total := 0
	for ctx.Err() == nil {
		due, err := a.q.DueLeases(ctx, reapBatch)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("reaper failed", "err", err)
			}
			return total
		}
		ended, err := a.expire(ctx, due)
		total += ended
		if ended > 0 {
			a.cfg.Observer.LeasesReaped(ended)
		}
		if err != nil || len(due) < reapBatch {
			return total
		}
	}
	return total
}

// expire ends the leases that DueLeases read as due, and reports how many
// it ended: the second step of a reaper pass, apart so that tests can
// interleave other statements between reading and ending.
func (a *Allocator) expire(ctx context.Context, due []uuid.UUID) (int, error) {
	ended := 0
	for _, id := range due {
		r, err := a.q.EndLease(ctx, dbsqlc.EndLeaseParams{ID: id, EndReason: EndExpired, ExpiredOnly: true})
		if errors.Is(err, pgx.ErrNoRows) {
			continue // ended first (another reaper, its holder), or renewed since it was read as due
		}
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("reaper failed", "lease", id, "err", err)
			}
			return ended, err
		}
		a.log.Info("lease expired", "lease", r.ID, "device", r.DeviceName, "pool", r.Pool, "owner", r.Owner)
		a.endedLease(r)
		ended++
	}
	return ended, nil
}
