package db

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/internal/testsignal"
)

// reapBatch bounds one reaper statement; a backlog is drained batch by batch.
const reapBatch = 100

// reaper ends expired leases, one pass every interval (jittered). Every
// instance runs one; EndLease's guards make each expiry happen exactly
// once. A freed device goes to the line in the same statement, or wakes
// waiters through ended (the Allocator's endedLease) after it commits.
type reaper struct {
	q        *dbsqlc.Queries
	interval time.Duration
	// probeTimeout: this instance's; a handoff still under its waiter's
	// probe is left to that probe for a while past its expiry (DueLeases).
	probeTimeout time.Duration
	log          *slog.Logger
	observer     Observer
	// ended tells whoever needs to know what an ending did with the device.
	ended func(dbsqlc.EndLeaseRow) dbsqlc.DevallocLease
	// cooldown holds expired leases this reaper could not end lately; it
	// passes them by for a while (see reapCooldown).
	cooldown reapCooldown
	// passed carries, for tests, how many leases each pass ended.
	passed testsignal.Signal[int]
	loop   loop
}

// Start runs a pass every interval until Stop.
func (r *reaper) Start(ctx context.Context) {
	r.loop.start(ctx, func(ctx context.Context) { every(ctx, r.interval, func(ctx context.Context) { r.pass(ctx) }) })
}

// Stop ends the passes and waits for the one running.
func (r *reaper) Stop() { r.loop.stop() }

// pass ends every lease that has expired by the database clock and reports
// how many it ended. Each lease ends in its own statement (EndLease), which
// hands its device to the first waiter in line it fits. The pass walks the
// due leases once, oldest first, batch after batch from where the last one
// ended: a lease that cannot be ended is skipped and reported, never
// retried within the pass, so it holds up no other expiry.
func (r *reaper) pass(ctx context.Context) int {
	total := 0
	// The probe timeout sets how long past its expiry a handoff still under
	// its waiter's probe is left to that probe (see DueLeases).
	params := dbsqlc.DueLeasesParams{Batch: reapBatch, ProbeTimeoutSeconds: r.probeTimeout.Seconds()}
	for ctx.Err() == nil {
		due, err := r.q.DueLeases(ctx, params)
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("reaper failed", "err", err)
			}
			r.passed.Signal(total)
			return total
		}
		ended, err := r.expire(ctx, due)
		total += ended
		if ended > 0 {
			r.observer.LeasesReaped(ended)
		}
		if err != nil || len(due) < reapBatch {
			r.passed.Signal(total)
			return total
		}
		last := due[len(due)-1]
		params.AfterExpiresAt, params.AfterID = &last.ExpiresAt, &last.ID
	}
	r.passed.Signal(total)
	return total
}

// expire ends the leases that DueLeases read as due, and reports how many
// it ended: the second step of a reaper pass, apart so that tests can
// interleave other statements between reading and ending. A lease the
// database refuses to end is skipped (logged, Observer.ReapFailed) and left
// alone for reapRetryAfter; one whose statement failed only for now (a lock
// or statement timeout, see failedForNow) is skipped for this pass only and
// tried again on the next. err is set only when the database itself
// failed (out of reach, shutting down), which would fail every lease alike.
func (r *reaper) expire(ctx context.Context, due []dbsqlc.DueLeasesRow) (int, error) {
	ended := 0
	now := time.Now()
	r.cooldown.forgetBefore(now)
	for _, d := range due {
		if r.cooldown.skips(d.ID, now) {
			continue
		}
		row, err := endLease(ctx, r.q, dbsqlc.EndLeaseParams{ID: d.ID, EndReason: EndExpired, ExpiredOnly: true})
		if errors.Is(err, pgx.ErrNoRows) {
			continue // ended first (another reaper, its holder), or renewed since it was read as due
		}
		if err != nil {
			if ctx.Err() != nil {
				return ended, err
			}
			if !refusedStatement(err) {
				r.log.Warn("reaper failed", "lease", d.ID, "err", err)
				return ended, err
			}
			if failedForNow(err) {
				// A lock or statement timeout, a deadlock, a serialization
				// failure: this statement lost, the row is fine. The next
				// pass tries again; a cool-down would leave the device to a
				// dead holder for a minute past its expiry.
				r.log.Warn("reaper could not end an expired lease this pass; the next pass tries again",
					"lease", d.ID, "expired_at", d.ExpiresAt, "err", err)
				continue
			}
			r.log.Error("reaper could not end an expired lease; skipping it", "lease", d.ID,
				"expired_at", d.ExpiresAt, "retry_in", reapRetryAfter, "err", err)
			r.observer.ReapFailed()
			r.cooldown.add(d.ID, now.Add(reapRetryAfter))
			continue
		}
		r.log.Info("lease expired", "lease", row.ID, "device", row.DeviceName, "pool", row.Pool, "owner", row.Owner)
		r.ended(row)
		ended++
	}
	return ended, nil
}

// failedForNow reports whether err failed one statement for a reason that
// passes (see IsTransient): a lock or statement timeout, a deadlock, a
// serialization failure. Unlike a constraint or a trigger refusing the row,
// the same statement may well succeed on the next pass.
func failedForNow(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "55P03", // lock_not_available (lock_timeout)
		"57014", // query_canceled (statement_timeout)
		"40P01", // deadlock_detected
		"40001": // serialization_failure
		return true
	}
	return false
}

// refusedStatement reports whether err is the server refusing this one
// statement (a trigger, a constraint; or a lock or statement timeout on the
// row, which failedForNow tells apart), as opposed to the database being out of reach, shutting down or
// out of connections, when every lease would fail alike.
func refusedStatement(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch {
	case strings.HasPrefix(pgErr.Code, "08"), // connection exception
		strings.HasPrefix(pgErr.Code, "57P"), // shutting down, cannot connect now
		pgErr.Code == "53300":                // too many connections
		return false
	}
	return true
}
