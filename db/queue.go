package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/wake"
)

// errDropped: the waiter's row left the line without a lease (its
// instance was taken for dead and its rows removed). It is an ErrNoDevice
// to the client when the wait cannot go on.
var errDropped = fmt.Errorf("left the line without a lease: %w", ErrNoDevice)

// errKeyHasLease: the request's idempotency key already has a lease (a
// twin, a retry of it waiting or granted elsewhere, got it), so it was not
// put in line, or its row was removed when the key was granted. It is
// answered with a replay of that lease, at once, never with a grant of its
// own (see migrations/00019).
var errKeyHasLease = errors.New("its idempotency key already has a lease")

// errJoinUndecided: a retried join found neither its row nor a lease
// handed to it, yet could not write the row: its earlier try, whose answer
// was lost, was still committing. Transient: the next try sees its outcome.
var errJoinUndecided = errors.New("an earlier try of this join was still committing")

// place is a waiter's place in line, kept so that a waiter whose handed-over
// device failed its probe goes back exactly where it was.
type place struct {
	seq        int64
	enqueuedAt time.Time
	rankedAt   time.Time
}

// queueBound caps the queue's statements that run off a request's clock
// (a dispatch after a release, giving devices back): they touch a few rows
// and never wait on a probe. Those of a waiting request are bound by what
// is left of its wait instead (attemptBound), so it is answered in time
// even when the database blocks them (a DBA's table lock).
const queueBound = 5 * time.Second

// waitInLine puts the request in its pool's line (devalloc.waiters) and
// waits, holding no connection, until a transaction hands it its devices,
// the window closes, the client leaves or the instance drains. Devices go
// to the line in order (ranked_at, seq) whichever instance frees them: a
// release hands its device to the first waiter it fits in the same
// transaction, and the pool's dispatch serves the line from idle devices
// when a device becomes idle some other way.
//
// Its steps: join (joinLine), wait for news (awaitWake; a hint that a
// device became idle serves the line, dispatch), then take what was
// handed over (takeHandoff, handoff.go), or leave when the wait ends
// (leaveLine).
func (a *Allocator) waitInLine(ctx context.Context, req AcquireRequest, window waitWindow) (Lease, bool, error) {
	w := a.hub.Join(req.Selector)
	defer w.Leave()
	start := time.Now()
	defer func() { a.cfg.Observer.AcquireWaited(time.Since(start)) }()

	at, lease, replayed, err := a.joinLine(ctx, req, w, window)
	if err != nil || replayed {
		return lease, replayed, err
	}
	for {
		if w.IsServed() {
			lease, replayed, back, err := a.takeHandoff(ctx, req, w, at, window)
			if back {
				continue
			}
			return lease, replayed, err
		}
		err := awaitWake(ctx, w, window, a.draining)
		if err != nil {
			return a.leaveLine(ctx, req, w, window, err)
		}
		if !w.IsServed() {
			// A hint that a device it fits became idle outside a handoff:
			// serve the line (this waiter, or whoever is before it).
			w.BeginAttempt()
			a.dispatch(ctx, req.Selector.Pool, a.attemptBound(window.remaining()))
			w.EndAttempt()
		}
	}
}

// joinLine writes w's row in line (enqueue) and serves the line at once
// when an idle device fits it, retrying a transient failure while the
// request may still wait. at is w's place, nil when an earlier try, whose
// answer was lost, joined and was served already: the wait collects that.
// A request whose key has a lease already is not put in line: that lease
// is the answer (replayed true).
func (a *Allocator) joinLine(ctx context.Context, req AcquireRequest, w *wake.Waiter, window waitWindow) (at *place, lease Lease, replayed bool, err error) {
	start := time.Now()
	for {
		p, fittingIdle, err := a.enqueue(ctx, req, w.ID, nil, a.attemptBound(window.remaining()))
		if err == nil {
			a.inLine(w, req)
			// A line with nothing idle for its newest member is busy; one
			// with an idle device it fits may have emptied.
			a.busyLines.saw(req.Selector.Pool, !fittingIdle)
			if fittingIdle {
				a.dispatch(ctx, req.Selector.Pool, a.attemptBound(window.remaining()))
			}
			return p, Lease{}, false, nil
		}
		if errors.Is(err, errKeyHasLease) {
			if lease, ok, err := a.replayTwin(ctx, req, window); err != nil || ok {
				return nil, lease, ok, err
			}
			// The key gave its lease up meanwhile (a handoff given back):
			// join again, while the request may still wait.
			if ctx.Err() != nil || window.remaining() <= 0 || a.isDraining() {
				return nil, Lease{}, false, fmt.Errorf("join the line of pool %q: %w", req.Selector.Pool, errDropped)
			}
			continue
		}
		if !a.retryQueueStep(ctx, window, err, start) {
			return nil, Lease{}, false, err
		}
	}
}

// enqueue writes the waiter's row; at, when set, is its old place. bound
// caps the statement. Retrying it after a failure is safe (see
// EnqueueWaiter): a row an earlier try wrote is taken as this join's, and
// when a lease was handed to id already, it reports no place (nil) and no
// error; the waiter's news of being served says the rest.
func (a *Allocator) enqueue(ctx context.Context, req AcquireRequest, id uuid.UUID, at *place, bound time.Duration) (*place, bool, error) {
	instance := a.instanceID.Load()
	if instance == 0 {
		return nil, false, errNotRegistered
	}
	params := dbsqlc.EnqueueWaiterParams{
		ID:                 id,
		InstanceID:         instance,
		Pool:               req.Selector.Pool,
		Labels:             req.Selector.Labels.JSON(),
		Count:              int32(max(req.Count, 1)),
		Priority:           int32(req.Priority),
		HeadStartSeconds:   float64(req.Priority) * a.cfg.PriorityAging.Seconds(),
		Owner:              req.Owner,
		Holder:             req.Holder,
		TtlSeconds:         req.TTL.Seconds(),
		RequestFingerprint: req.fingerprint,
		// Its leases start pending: a retry must not replay them before the
		// probe passed (collect confirms them).
		ProbesHandoff: a.cfg.ProbeOnHandoff,
	}
	if req.IdempotencyKey != "" {
		params.IdempotencyKey = &req.IdempotencyKey
	}
	if at != nil {
		params.Seq, params.EnqueuedAt, params.RankedAt = &at.seq, &at.enqueuedAt, &at.rankedAt
	}
	// Run to the end even if the client leaves meanwhile: a cancelled
	// statement may still have committed, and a row nobody knows of would
	// be served to nobody. The caller's next step sees ctx ended and leaves
	// the line properly.
	stmtCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bound)
	defer cancel()
	row, err := a.q.EnqueueWaiter(stmtCtx, params)
	if isInstanceRowGone(err) {
		// Another instance removed this one's row (an outage past its
		// heartbeat bound): put it back, then join.
		if rerr := a.restoreInstance(stmtCtx, instance); rerr != nil {
			err = rerr
		} else {
			row, err = a.q.EnqueueWaiter(stmtCtx, params)
		}
	}
	if err == nil && row.KeyTaken {
		// Refused, nothing written: a twin got the key's lease.
		return nil, false, fmt.Errorf("join the line of pool %q: %w", req.Selector.Pool, errKeyHasLease)
	}
	if err == nil && row.Seq == nil && !row.Served {
		err = errJoinUndecided
	}
	if err != nil {
		// Cut off by the bound just as it committed, the row may be there:
		// take it out again, as far as one more try goes.
		a.forgetWaiter(ctx, req, id)
		return nil, false, fmt.Errorf("join the line of pool %q: %w", req.Selector.Pool, err)
	}
	// An earlier failed try of this join may have stranded the id; the row
	// (or the lease handed to it) is this waiter's now.
	a.stranded.forget(id)
	if row.Served {
		a.log.Info("a retried join found its waiter served already", "pool", req.Selector.Pool, "waiter", id)
		return nil, false, nil
	}
	if row.EnqueuedAt == nil || row.RankedAt == nil {
		return nil, false, fmt.Errorf("join the line of pool %q: no place came back", req.Selector.Pool)
	}
	return &place{seq: *row.Seq, enqueuedAt: *row.EnqueuedAt, rankedAt: *row.RankedAt}, row.FittingIdle, nil
}

// forgetWaiter removes a waiter's row that may have been written although
// its statement failed. It tries once, briefly (the join's failure already
// took the request's time); failing that, the row is stranded for the
// re-checker to remove. No row: either the join never committed, or it did
// and the row was served at once. The id is marked stranded then too, so
// that if the request gives up now, the re-checker gives back what was
// handed to it; a retried join that succeeds drops the mark (enqueue).
func (a *Allocator) forgetWaiter(ctx context.Context, req AcquireRequest, id uuid.UUID) {
	stmtCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), minStepBound)
	defer cancel()
	n, err := a.q.CancelWaiter(stmtCtx, id)
	if err != nil {
		a.strand(id, req, fmt.Errorf("make sure a failed join left no row in line: %w", err))
		return
	}
	if n == 0 {
		a.stranded.add(id, req.IdempotencyKey != "")
	}
}

// inLine marks w as in line (its row committed), for the hub and for the
// tests that wait on a join.
func (a *Allocator) inLine(w *wake.Waiter, req AcquireRequest) {
	w.MarkEnqueued()
	a.joined.Signal(joinedLine{Waiter: w.ID, Owner: req.Owner, Pool: req.Selector.Pool})
}

// joinedLine is a test signal: a request of Owner is in the line of Pool
// (its row committed) as Waiter, by a join or a rejoin.
type joinedLine struct {
	Waiter uuid.UUID
	Owner  string
	Pool   string
}

// retryQueueStep waits out a transient failure of a queue statement while
// the request may still wait (or, for errNotRegistered, within
// registrationGrace of start).
func (a *Allocator) retryQueueStep(ctx context.Context, window waitWindow, err error, since time.Time) bool {
	if errors.Is(err, errNotRegistered) && time.Since(since) < registrationGrace && ctx.Err() == nil && !a.isDraining() {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
			return true
		}
	}
	if !a.mayWaitOut(ctx, window, err) {
		return false
	}
	a.log.Warn("joining the line failed; retrying", "err", err)
	return pauseForRetry(ctx, window, retryPauseMax)
}

// registrationGrace is how long a request that may not wait still waits
// for its instance to register (just after start, before the listener's
// first connection), rather than fail.
const registrationGrace = 2 * time.Second

// replayTwin answers a request whose key has a lease already
// (errKeyHasLease) with that lease, through replay (which knows what may
// be replayed); ok false when the key has none any more.
func (a *Allocator) replayTwin(ctx context.Context, req AcquireRequest, window waitWindow) (Lease, bool, error) {
	lease, ok, err := a.replayWithin(ctx, req, a.attemptBound(window.remaining()))
	if err != nil {
		return Lease{}, false, fmt.Errorf("replay the lease its key already has: %w", err)
	}
	if ok {
		a.log.Info("a twin in line is answered with its key's lease", "pool", req.Selector.Pool, "lease", lease.ID)
	}
	return lease, ok, nil
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

// leaveLine ends a wait that stopped for cause (window closed, client gone,
// instance draining): the waiter's row goes, unless a transaction handed it
// devices first; then those are the answer (or, the client being gone, are
// given back at once). When the database will not let the row go within
// what is left of the answer's time, the answer is cause anyway and the
// row is stranded: the re-checker removes it (see strandedWaiters).
func (a *Allocator) leaveLine(ctx context.Context, req AcquireRequest, w *wake.Waiter, window waitWindow, cause error) (Lease, bool, error) {
	stmtCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.attemptBound(window.remaining()))
	defer cancel()
	n, err := a.q.CancelWaiter(stmtCtx, w.ID)
	if err != nil {
		a.strand(w.ID, req, fmt.Errorf("leave the line of pool %q: %w", req.Selector.Pool, err))
		return Lease{}, false, cause
	}
	if n == 1 {
		if req.Count > 1 {
			// A group in line holds back the idle devices it fits from
			// the waiters behind it (devalloc.dispatch); gone, it must not
			// keep them from the line until the next re-check.
			a.dispatch(ctx, req.Selector.Pool, a.attemptBound(window.remaining()))
		}
		if errors.Is(cause, ErrNoDevice) && req.IdempotencyKey != "" {
			// A retry of this request may have won a device at another
			// instance meanwhile: that lease is the answer, not a 503.
			if lease, ok, rerr := a.replayWithin(ctx, req, a.attemptBound(window.remaining())); rerr == nil && ok {
				return lease, true, nil
			}
		}
		return Lease{}, false, cause
	}
	// Served just before it could leave (or its row removed because a
	// twin got the key's lease).
	lease, replayed, giveBack, err := a.collect(ctx, req, w)
	a.abandonAllHanded(giveBack, w.ID)
	if giveBack != nil {
		// A device failed its probe and there is no time left to wait for
		// another.
		return Lease{}, false, cause
	}
	return lease, replayed, err
}

// rejoin puts a served waiter back in line at its old place (at): its
// devices were taken back, or its row was dropped. It goes back under a new
// id: a waiter id is served at most once (see EnqueueWaiter), which is what
// lets a retried join tell that it was served already.
func (a *Allocator) rejoin(ctx context.Context, req AcquireRequest, w *wake.Waiter, at *place, window waitWindow) error {
	a.hub.RenameWaiter(w) // first: late news for the old id is no longer w's
	w.ResetServed()
	if _, _, err := a.enqueue(ctx, req, w.ID, at, a.attemptBound(window.remaining())); err != nil {
		return err
	}
	a.inLine(w, req)
	return nil
}

// rejoinFailed answers a request that could not go back in line: with its
// key's lease when that is why (errKeyHasLease), else with err.
func (a *Allocator) rejoinFailed(ctx context.Context, req AcquireRequest, window waitWindow, err error) (Lease, bool, error) {
	if errors.Is(err, errKeyHasLease) {
		if lease, ok, rerr := a.replayTwin(ctx, req, window); rerr != nil || ok {
			return lease, ok, rerr
		}
		return Lease{}, false, fmt.Errorf("rejoin the line of pool %q: %w", req.Selector.Pool, errDropped)
	}
	return Lease{}, false, err
}

// dispatch serves the pool's line from its idle devices and tells the
// waiters served. A failure only delays them: the next hint or re-check
// dispatches again. bound caps the statement.
func (a *Allocator) dispatch(ctx context.Context, pool string, bound time.Duration) {
	stmtCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bound)
	defer cancel()
	rows, err := a.q.Dispatch(stmtCtx, pool)
	if err != nil {
		a.log.Warn("serving the line failed; the next wake-up or re-check tries again", "pool", pool, "err", err)
		return
	}
	a.tellServed(rows)
}

// tellServed wakes the waiters that the leases were handed to.
func (a *Allocator) tellServed(rows []dbsqlc.DevallocLease) {
	var served []uuid.UUID
	seen := map[uuid.UUID]bool{}
	for _, r := range rows {
		if r.WaiterID != nil && !seen[*r.WaiterID] {
			seen[*r.WaiterID] = true
			served = append(served, *r.WaiterID)
		}
	}
	if len(served) > 0 {
		a.notifier.HandedOver(served)
	}
}
