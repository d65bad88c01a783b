package db

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/devalloctype"
	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/wake"
)

// maxProbeRoundsWithoutWait bounds how many transactions an acquire that
// may not wait spends on candidates that fail their probes (each round
// probes up to ProbeCandidates devices).
const maxProbeRoundsWithoutWait = 3

// noneIdle: this attempt found nothing it could lease. probesFailed
// distinguishes "every candidate was dead" (worth retrying at once: the dead
// ones are offline now) from "nothing idle" (wait for a wake-up); queued
// says others wait in the pool's line, which a new request must join
// rather than overtake, even when it may not wait.
type noneIdle struct{ probesFailed, queued bool }

func (noneIdle) Error() string { return "no idle device matched" }

// keyTaken: the grant failed because the owner already has a lease with
// the request's idempotency key (granted meanwhile, maybe by another
// instance). The attempt rolled back, so the device it had picked is still
// idle; event says so, for another waiter.
type keyTaken struct{ event wake.IdleEvent }

func (keyTaken) Error() string { return "idempotency key already has a lease" }

// atOnce is the first step of an acquire: attempts (attemptAny) until one
// grants a lease or finds nothing it may lease, which is noneIdle (queued:
// others wait in the pool's line) and sends the acquire on to its next
// steps. A
// group, and a request that may wait for a pool whose line looks busy
// (busyLineMemory), go to the line without an attempt: the pool's dispatch
// is what gathers several devices without racing other groups, and a busy
// line is not overtaken. When another request has the lease of the
// request's idempotency key, that lease is the answer (replayed true).
func (a *Allocator) atOnce(ctx context.Context, req AcquireRequest, window waitWindow, retry *stepRetry) (Lease, bool, error) {
	if req.Count > 1 || (window.remaining() > 0 && a.busyLines.looksBusy(req.Selector.Pool)) {
		return Lease{}, false, noneIdle{queued: true}
	}
	probeRounds := 0
	for {
		// An attempt gets the slack in full even when a round of failed
		// probes ran past the wait: it is what can still find a device.
		lease, err := a.attemptAny(ctx, req, a.attemptBound(max(window.remaining(), 0)))
		var taken keyTaken
		if errors.As(err, &taken) {
			// Pass the device we let go on to whoever else wants it; then
			// answer with the lease that won the key.
			a.hub.Notify(taken.event)
			lease, ok, err := a.replayWithin(ctx, req, a.attemptBound(max(window.remaining(), 0)))
			if err == nil && !ok {
				// The conflicting lease committed (the unique index waited
				// for it), but it was a handoff under probe that failed
				// and gave the key up with its end (replay waited for
				// that, or took it back unsettled): the key is free, so
				// try again. Each round needs another handoff of this key
				// to fail its probe or be taken back after its settle
				// bound, so this never spins.
				continue
			}
			return lease, ok, err
		}
		var none noneIdle
		if !errors.As(err, &none) {
			if err != nil && retry.again(ctx, err) {
				continue
			}
			return lease, false, err
		}
		retry.reset()
		if none.probesFailed && (window.remaining() > 0 || probeRounds < maxProbeRoundsWithoutWait) {
			// The dead candidates are offline now; live ones may be next in
			// line, so try again at once rather than wait or give up.
			probeRounds++
			continue
		}
		a.busyLines.saw(req.Selector.Pool, none.queued)
		return Lease{}, false, none
	}
}

// attemptAny is one acquire attempt: the one-statement path first, unless
// this pool's devices have been needing probes, then the transaction.
func (a *Allocator) attemptAny(ctx context.Context, req AcquireRequest, bound time.Duration) (Lease, error) {
	pool := req.Selector.Pool
	if _, probes := a.probedPools.Load(pool); !probes {
		lease, found, err := a.attemptUnprobed(ctx, req, bound)
		switch {
		case err != nil:
			return Lease{}, err
		case found == unprobedGranted:
			return lease, nil
		case found == unprobedNoneIdle:
			return Lease{}, noneIdle{}
		case found == unprobedQueued:
			return Lease{}, noneIdle{queued: true}
		}
		a.probedPools.Store(pool, struct{}{})
	}
	start := time.Now()
	lease, probed, err := a.attempt(ctx, req, bound)
	if err == nil && !probed {
		// The line has moved on to devices that need no probe.
		a.probedPools.Delete(pool)
	}
	var none noneIdle
	if errors.As(err, &none) && !none.probesFailed {
		// The transaction picks nothing while others wait in line either;
		// tell that apart from nothing idle.
		// Within what is left of the attempt's bound: with every
		// connection busy (a DBA's lock holding them), the wait for one
		// must not outlast the request.
		qctx, cancel := context.WithTimeout(ctx, leftOf(start.Add(bound)))
		busy, qerr := a.q.QueueBusy(qctx, pool)
		cancel()
		if qerr != nil {
			return Lease{}, fmt.Errorf("acquire in pool %q: look at the line: %w", pool, qerr)
		}
		return Lease{}, noneIdle{queued: busy}
	}
	return lease, err
}

// attempt is one acquire transaction: pick the least recently released
// idle device with SKIP LOCKED, probe it under the row lock, and grant it;
// a device that fails its probe goes offline and the next candidate is
// tried, up to ProbeCandidates. probed tells whether the granted device was
// probed.
//
// bound caps the time the transaction spends waiting on the database: for
// a pool connection, then in its statements (the probes are not statements
// and have their own deadline; after one, the grant gets what is left).
func (a *Allocator) attempt(ctx context.Context, req AcquireRequest, bound time.Duration) (lease Lease, probed bool, err error) {
	sel := req.Selector
	deadline := time.Now().Add(bound)
	conn, tx, err := a.beginBounded(ctx, deadline)
	if err != nil {
		return Lease{}, false, fmt.Errorf("acquire in pool %q: %w", sel.Pool, err)
	}
	defer conn.Release()
	// Rollback must run even when ctx is what ended the attempt.
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	q := a.q.WithTx(tx)
	labels := sel.Labels.JSON()
	failed := 0
	for failed < a.cfg.ProbeCandidates {
		row, err := q.PickIdleDevice(ctx, dbsqlc.PickIdleDeviceParams{Pool: sel.Pool, Labels: labels})
		if errors.Is(err, pgx.ErrNoRows) {
			break
		}
		if err != nil {
			return Lease{}, false, fmt.Errorf("acquire in pool %q: pick: %w", sel.Pool, err)
		}
		probed := a.needsProbe(row)
		if !probed {
			lease, err := a.grant(ctx, tx, q, req, row, false)
			return lease, false, err
		}
		if perr := a.probeDevice(ctx, row); perr != nil {
			if ctx.Err() != nil {
				return Lease{}, false, ctx.Err()
			}
			a.log.Info("device failed its probe; taking it offline", "device", row.Name, "pool", row.Pool, "err", perr)
			if err := q.MarkDeviceOffline(ctx, dbsqlc.MarkDeviceOfflineParams{
				ID: row.ID, Reason: perr.Error(), RetryInSeconds: a.cfg.HealthBackoffMin.Seconds(),
			}); err != nil {
				return Lease{}, false, fmt.Errorf("acquire in pool %q: mark %q offline: %w", sel.Pool, row.Name, err)
			}
			failed++
			continue
		}
		// The probe took time the grant must not wait again.
		if err := q.NarrowTimeouts(ctx, strconv.FormatInt(leftOf(deadline).Milliseconds(), 10)); err != nil {
			return Lease{}, false, fmt.Errorf("acquire in pool %q: narrow timeouts: %w", sel.Pool, err)
		}
		lease, err := a.grant(ctx, tx, q, req, row, probed)
		return lease, probed, err
	}
	if failed > 0 {
		// Keep the offline marks: they are what the probes learned.
		if err := tx.Commit(ctx); err != nil {
			return Lease{}, false, fmt.Errorf("acquire in pool %q: commit offline marks: %w", sel.Pool, err)
		}
	}
	return Lease{}, false, noneIdle{probesFailed: failed > 0}
}

// beginBounded takes a pool connection and begins a transaction on it
// whose lock and statement timeouts end at deadline. A BEGIN that failed
// before reaching the server (a cut connection) is tried once more on
// another connection. The caller releases conn.
func (a *Allocator) beginBounded(ctx context.Context, deadline time.Time) (*pgxpool.Conn, pgx.Tx, error) {
	for try := 1; ; try++ {
		// Waiting for a pool connection counts: when the database is slow
		// every connection may be busy.
		connCtx, cancel := context.WithDeadline(ctx, deadline)
		conn, err := a.pool.Acquire(connCtx)
		cancel()
		if err != nil {
			return nil, nil, fmt.Errorf("connection: %w", err)
		}
		// What is left of the bound rides along with BEGIN: one round trip.
		ms := leftOf(deadline).Milliseconds()
		tx, err := conn.BeginTx(ctx, pgx.TxOptions{BeginQuery: fmt.Sprintf(
			"BEGIN; SET LOCAL lock_timeout = %d; SET LOCAL statement_timeout = %d", ms, ms)})
		if err == nil {
			return conn, tx, nil
		}
		conn.Release()
		if try > 1 || !retryable(ctx, err) {
			return nil, nil, fmt.Errorf("begin: %w", err)
		}
	}
}

// leftOf is the time left until deadline, at least minStepBound: a
// statement started late still gets a moment.
func leftOf(deadline time.Time) time.Duration {
	return max(time.Until(deadline), minStepBound)
}

// grant marks the locked device leased and records the lease, then commits.
// The commit itself runs without the request's context: were it cancelled
// mid-commit we could not know whether the lease exists. If the client went
// away meanwhile, the fresh lease is ended at once, so nothing is left behind
// (unless it has an idempotency key). A key the owner already has a lease
// for fails with keyTaken.
func (a *Allocator) grant(ctx context.Context, tx pgx.Tx, q *dbsqlc.Queries, req AcquireRequest, row dbsqlc.DevallocDevice, probed bool) (Lease, error) {
	leaseID, err := uuid.NewV7()
	if err != nil {
		return Lease{}, fmt.Errorf("lease id: %w", err)
	}
	var idem *string
	if req.IdempotencyKey != "" {
		idem = &req.IdempotencyKey
	}
	lr, err := q.GrantLease(ctx, dbsqlc.GrantLeaseParams{
		LeaseID:            leaseID,
		Owner:              req.Owner,
		Holder:             req.Holder,
		TtlSeconds:         req.TTL.Seconds(),
		IdempotencyKey:     idem,
		RequestFingerprint: req.fingerprint,
		Probed:             probed,
		DeviceID:           row.ID,
	})
	if isIdempotencyConflict(err) {
		// The deferred rollback undoes the device update with the failed
		// insert: the device stays idle.
		labels, lerr := devalloctype.DecodeLabels(row.Labels)
		return Lease{}, keyTaken{event: wake.IdleEvent{Pool: row.Pool, Labels: labels, LabelsKnown: lerr == nil}}
	}
	if err != nil {
		return Lease{}, fmt.Errorf("acquire %q in pool %q: grant: %w", row.Name, row.Pool, err)
	}
	if err := ctx.Err(); err != nil {
		return Lease{}, err
	}
	if err := tx.Commit(context.WithoutCancel(ctx)); err != nil {
		return Lease{}, fmt.Errorf("acquire %q in pool %q: commit: %w", row.Name, row.Pool, err)
	}
	dev, err := deviceFromRow(row)
	if err != nil {
		return Lease{}, err
	}
	lease := leaseFromRow(lr, &dev)
	if ctx.Err() != nil && req.IdempotencyKey == "" {
		a.abandon(lease)
		return Lease{}, ctx.Err()
	}
	// A lease with an idempotency key is kept even when its requesters are
	// gone: it is recorded under the key, and their retry (maybe at another
	// instance, which may already have answered with it) replays it. Had
	// nobody retried, the reaper reclaims it at expiry.
	return lease, nil
}
