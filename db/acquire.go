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
	"github.com/devalloc/devalloc/db/probe"
	"github.com/devalloc/devalloc/db/wake"
)

// AcquireRequest asks for one device.
type AcquireRequest struct {
	Selector Selector
	// Wait is how long to long-poll when nothing matching is idle; 0 answers
	// at once.
	Wait time.Duration
	// TTL is the lease's lifetime; 0 means the configured default.
	TTL time.Duration
	// Owner is the API key the lease belongs to; Holder is the client's own
	// free-text description of who holds it.
	Owner  string
	Holder string
	// IdempotencyKey, when set, makes the acquire safe to retry: the owner's
	// requests with the same key get one lease between them (see
	// AcquireOrReplay).
	IdempotencyKey string
	// Count is how many devices to lease, all or none (a group); 0 means 1.
	Count int
	// Priority orders the line: higher is served first, and waiting makes
	// up for it over time (Config.PriorityAging). The API bounds it per role.
	Priority int

	// fingerprint identifies the request for its idempotency key; set by
	// AcquireOrReplay.
	fingerprint []byte
}

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

// Acquire leases a device matching req.Selector, waiting up to req.Wait for
// one to become idle. It fails with ErrUnsatisfiable at once when no
// registered device could ever match, and with ErrNoDevice when the wait
// ends empty. If ctx ends first, no lease is left behind (unless the request
// has an idempotency key: see AcquireOrReplay).
func (a *Allocator) Acquire(ctx context.Context, req AcquireRequest) (Lease, error) {
	lease, _, err := a.AcquireOrReplay(ctx, req)
	return lease, err
}

// attemptBoundSlack is how far past the end of its wait a statement of an
// acquire may run: a request blocked in the database (a DBA's table lock, a
// slow disk) is answered within about wait + this, not after the server's
// own, longer timeouts.
const attemptBoundSlack = 500 * time.Millisecond

// minStepBound is the least bound a step of an acquire gets, even when it
// starts after the acquire should have been answered: enough for a
// statement the database does not block.
const minStepBound = 100 * time.Millisecond

// attemptBound is the statement bound of a step of an acquire with
// remaining wait left (negative once the wait is over): the rest of the
// wait plus attemptBoundSlack, so that steps run one after another past
// the end of the wait (a dispatch, then leaving the line) still answer
// within about wait + slack; at least minStepBound, never more than the
// configured database timeouts.
func (a *Allocator) attemptBound(remaining time.Duration) time.Duration {
	return min(max(remaining+attemptBoundSlack, minStepBound), a.cfg.StatementTimeout, a.cfg.LockTimeout)
}

// waitWindow is how long an acquire may keep waiting. A flight's window
// grows when a retry that may wait longer joins it.
type waitWindow interface {
	// remaining is the time left; <= 0 means waiting is over.
	remaining() time.Duration
	// grew delivers a token when the window was extended; nil if it never is.
	grew() <-chan struct{}
}

// fixedWindow ends at a fixed time.
type fixedWindow time.Time

func (w fixedWindow) remaining() time.Duration { return time.Until(time.Time(w)) }
func (fixedWindow) grew() <-chan struct{}      { return nil }

// acquire is the acquire loop: a device at once when one is idle and
// nobody waits in the pool's line, else a place in that line (waitInLine)
// until one is handed over or the window closes. With an idempotency key it
// ends as soon as the key's lease exists, replaying it (replayed true).
func (a *Allocator) acquire(ctx context.Context, req AcquireRequest, window waitWindow) (lease Lease, replayed bool, err error) {
	if req.TTL <= 0 {
		req.TTL = a.cfg.DefaultTTL
	}
	req.Count = max(req.Count, 1)
	probeRounds := 0
	pause := retryPauseMin
	// retry decides whether a transient database failure (a dropped
	// connection, a restart, a timeout) is waited out rather than returned:
	// only while the request may still wait.
	retry := func(err error) bool {
		if ctx.Err() != nil || !IsTransient(err) || window.remaining() <= 0 || a.isDraining() {
			return false
		}
		a.log.Warn("acquire attempt failed; retrying", "pool", req.Selector.Pool, "err", err, "in", pause)
		ok := pauseForRetry(ctx, window, pause)
		pause = min(pause*2, retryPauseMax)
		return ok
	}
	// A group always goes through the line: the pool's dispatcher is what
	// gathers several devices at once without racing other groups. So does
	// a request that may wait for a pool whose line is busy (see
	// busyLineMemory).
	queued := req.Count > 1 || (window.remaining() > 0 && a.busyLines.looksBusy(req.Selector.Pool))
	for !queued {
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
			if err != nil && retry(err) {
				continue
			}
			return lease, false, err
		}
		pause = retryPauseMin
		if none.probesFailed && (window.remaining() > 0 || probeRounds < maxProbeRoundsWithoutWait) {
			// The dead candidates are offline now; live ones may be next in
			// line, so try again at once rather than wait or give up.
			probeRounds++
			continue
		}
		queued = none.queued
		a.busyLines.saw(req.Selector.Pool, queued)
		break
	}
	for {
		err := a.checkSatisfiable(ctx, req.Selector, req.Count, a.attemptBound(window.remaining()))
		if err == nil {
			break
		}
		if !retry(err) {
			return Lease{}, false, err
		}
	}
	if req.IdempotencyKey != "" {
		// The key's lease may have been granted since this acquire
		// looked (by a flight that ended just before this one began, or
		// at another instance): then that is the answer, not a wait.
		for {
			lease, ok, err := a.replayWithin(ctx, req, a.attemptBound(window.remaining()))
			if err != nil && retry(err) {
				continue
			}
			if err != nil || ok {
				return lease, ok, err
			}
			break
		}
	}
	if !queued && window.remaining() <= 0 {
		return Lease{}, false, ErrNoDevice
	}
	return a.waitInLine(ctx, req, window)
}

// awaitWake blocks until w is woken (nil), the window closes (ErrNoDevice),
// the instance drains (ErrShuttingDown) or ctx ends.
func awaitWake(ctx context.Context, w *wake.Waiter, window waitWindow, draining <-chan struct{}) error {
	for {
		left := window.remaining()
		if left <= 0 {
			return ErrNoDevice
		}
		timer := time.NewTimer(left)
		select {
		case <-w.Wake():
			timer.Stop()
			return nil
		case <-timer.C:
			// Loop: the window may have grown meanwhile.
		case <-window.grew():
			timer.Stop()
		case <-draining:
			timer.Stop()
			return ErrShuttingDown
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		}
	}
}

// checkSatisfiable fails with ErrUnsatisfiable when fewer than count
// registered devices could ever fit sel. A selector found satisfiable for
// one device recently is not asked about again (see satisfiableFor).
func (a *Allocator) checkSatisfiable(ctx context.Context, sel Selector, count int, bound time.Duration) error {
	if count <= 1 && a.satisfiable.fresh(sel, time.Now()) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	ok, err := a.q.SelectorCanMatch(ctx, dbsqlc.SelectorCanMatchParams{Pool: sel.Pool, Labels: sel.Labels.JSON(), Want: int32(max(count, 1))})
	if err != nil {
		return fmt.Errorf("check selector in pool %q: %w", sel.Pool, err)
	}
	if !ok {
		return ErrUnsatisfiable
	}
	a.satisfiable.remember(sel, time.Now())
	return nil
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

// needsProbe tells whether an acquire must probe the device before
// granting it: always, unless its probe is "none" or, with ProbeFreshness
// on, it was released by a holder (not merely registered) or passed a
// probe within that window. The window is read on this instance's clock;
// GrantUnprobed applies the same rule on the database's.
func (a *Allocator) needsProbe(row dbsqlc.DevallocDevice) bool {
	if probe.Kind(row.Probe) == probe.None {
		return false
	}
	fresh := a.cfg.ProbeFreshness
	if fresh <= 0 {
		return true
	}
	if row.FencingToken > 0 && time.Since(row.IdleSince) < fresh {
		return false
	}
	passed := row.LastProbeOk != nil && *row.LastProbeOk && row.LastProbeAt != nil
	return !passed || time.Since(*row.LastProbeAt) >= fresh
}

func (a *Allocator) probeDevice(ctx context.Context, row dbsqlc.DevallocDevice) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.ProbeTimeout)
	defer cancel()
	return a.probe(ctx, row.Probe, row.Address)
}

// probe runs the configured prober and tells the observer how it went.
func (a *Allocator) probe(ctx context.Context, kind, address string) error {
	start := time.Now()
	err := a.cfg.Prober.Probe(ctx, probe.Kind(kind), address)
	a.cfg.Observer.ProbeDone(kind, time.Since(start), err)
	return err
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
