package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/probe"
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
func (a *Allocator) waitInLine(ctx context.Context, req AcquireRequest, window waitWindow) (Lease, bool, error) {
	w := a.hub.Join(req.Selector)
	defer w.Leave()
	start := time.Now()
	defer func() { a.cfg.Observer.AcquireWaited(time.Since(start)) }()

	var at *place
	for {
		p, fittingIdle, err := a.enqueue(ctx, req, w.ID, at, a.attemptBound(window.remaining()))
		if err == nil {
			// nil when an earlier try, whose answer was lost, joined and
			// was served already: the wait below collects that.
			at = p
			w.MarkEnqueued()
			a.joined.Signal(joinedLine{Waiter: w.ID, Owner: req.Owner, Pool: req.Selector.Pool})
			// A line with nothing idle for its newest member is busy; one
			// with an idle device it fits may have emptied.
			a.busyLines.saw(req.Selector.Pool, !fittingIdle)
			if fittingIdle {
				a.dispatch(ctx, req.Selector.Pool, a.attemptBound(window.remaining()))
			}
			break
		}
		if errors.Is(err, errKeyHasLease) {
			if lease, ok, err := a.replayTwin(ctx, req, window); err != nil || ok {
				return lease, ok, err
			}
			// The key gave its lease up meanwhile (a handoff given back):
			// join again, while the request may still wait.
			if ctx.Err() != nil || window.remaining() <= 0 || a.isDraining() {
				return Lease{}, false, fmt.Errorf("join the line of pool %q: %w", req.Selector.Pool, errDropped)
			}
			continue
		}
		if !a.retryQueueStep(ctx, window, err, start) {
			return Lease{}, false, err
		}
	}
	for {
		if w.IsServed() {
			lease, replayed, giveBack, err := a.collect(ctx, req, w)
			if errors.Is(err, errDropped) && window.remaining() > 0 && ctx.Err() == nil && !a.isDraining() {
				// Its row went without a lease (its instance was taken for
				// dead while cut off): back to its old place.
				a.log.Warn("a waiting request lost its place in line; putting it back", "pool", req.Selector.Pool, "waiter", w.ID)
				if err := a.rejoin(ctx, req, w, at, window); err != nil {
					return a.rejoinFailed(ctx, req, window, err)
				}
				continue
			}
			if giveBack == nil {
				return lease, replayed, err
			}
			handedTo := w.ID // before a rejoin renames w
			// A handed-over device failed its probe (or its lease ended
			// during the probe). Its key was given up with the handoff, so
			// a retry may have got a lease with it meanwhile (elsewhere):
			// that is the answer, rather than a place in line its key
			// keeps from being served.
			if req.IdempotencyKey != "" {
				if lease, ok, rerr := a.replayWithin(ctx, req, attemptBoundSlack); rerr == nil && ok {
					for _, l := range giveBack {
						if !answers(lease, l.ID) {
							a.abandonHanded(l, handedTo)
						}
					}
					return lease, true, nil
				}
			}
			// Back to the same place first, then the devices that answered
			// go back to the line, whose head this waiter may well be.
			err = a.rejoin(ctx, req, w, at, window)
			for _, l := range giveBack {
				a.abandonHanded(l, handedTo)
			}
			if err != nil {
				return a.rejoinFailed(ctx, req, window, err)
			}
			a.dispatch(ctx, req.Selector.Pool, a.attemptBound(window.remaining()))
			continue
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

// registrationGrace is how long a request that may not wait still waits
// for its instance to register (just after start, before the listener's
// first connection), rather than fail.
const registrationGrace = 2 * time.Second

// joinedLine is a test signal: a request of Owner is in the line of Pool
// (its row committed) as Waiter, by a join or a rejoin.
type joinedLine struct {
	Waiter uuid.UUID
	Owner  string
	Pool   string
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
	w.MarkEnqueued()
	a.joined.Signal(joinedLine{Waiter: w.ID, Owner: req.Owner, Pool: req.Selector.Pool})
	return nil
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
	if ctx.Err() != nil || !IsTransient(err) || window.remaining() <= 0 || a.isDraining() {
		return false
	}
	a.log.Warn("joining the line failed; retrying", "err", err)
	return pauseForRetry(ctx, window, retryPauseMax)
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
	for _, l := range giveBack {
		a.abandonHanded(l, w.ID)
	}
	if giveBack != nil {
		// A device failed its probe and there is no time left to wait for
		// another.
		return Lease{}, false, cause
	}
	return lease, replayed, err
}

// collect reads the leases handed to w and answers with them: probed first
// when Config.ProbeOnHandoff asks, given back at once when the client left
// (unless it has an idempotency key, whose retry needs them). When a device
// failed its probe, giveBack is non-nil (maybe empty): the leases of the
// devices that answered, for the caller to release once the waiter is back
// in line. replayed: the waiter was handed nothing, its row having gone
// because its key has a lease (a twin's), and the answer is that lease.
func (a *Allocator) collect(ctx context.Context, req AcquireRequest, w *wake.Waiter) (lease Lease, replayed bool, giveBack []Lease, err error) {
	rows := w.HandedLeases()
	if rows != nil {
		// A served notice does not say whether the leases are pending: they
		// are when this instance asked for them to be (the waiter's row
		// carried probes_handoff from this instance's config).
		for i := range rows {
			rows[i].DevallocLease.HandoffPending = a.cfg.ProbeOnHandoff
		}
	} else {
		// The news came without them (from this instance's own release, a
		// re-check, or an outsized notice): read them.
		readCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), attemptBoundSlack)
		defer cancel()
		var err error
		if rows, err = a.q.WaiterLeases(readCtx, &w.ID); err != nil {
			err = fmt.Errorf("read the leases handed to waiter %s: %w", w.ID, err)
			a.giveBackUnread(req, w, err)
			return Lease{}, false, nil, err
		}
	}
	if len(rows) == 0 {
		// Dropped without a lease: its idempotency key already had one (a
		// twin got it; see devalloc.tell_twins), or its instance was taken
		// for dead.
		if req.IdempotencyKey != "" {
			if lease, ok, err := a.replayWithin(ctx, req, attemptBoundSlack); err != nil || ok {
				return lease, ok, nil, err
			}
		}
		return Lease{}, false, nil, fmt.Errorf("waiter %s in pool %q: %w", w.ID, req.Selector.Pool, errDropped)
	}
	leases := make([]Lease, 0, len(rows))
	for _, r := range rows {
		l, err := leaseFromHanded(r)
		if err != nil {
			a.giveBackUnread(req, w, err)
			return Lease{}, false, nil, err
		}
		leases = append(leases, l)
	}
	if len(leases) < max(req.Count, 1) {
		// Part of the handoff ended before it was read (WaiterLeases lists
		// active leases only): an admin revoked one, a device was removed,
		// or a take-back was cut between its statements.
		if req.IdempotencyKey != "" && !leases[0].HandoffPending {
			// Not probed, so never pending: a retry may have replayed it
			// already (and its client released a lease of it). The answer
			// is what a replay answers, so that every answer under the key
			// agrees, ended leases and all.
			lease, ok, err := a.replayWithin(ctx, req, attemptBoundSlack)
			switch {
			case err != nil:
				// No answer but the failure (transient): the leases stay,
				// for the retry's replay, never part of the group.
				return Lease{}, false, nil, fmt.Errorf("replay the handoff to waiter %s: %w", w.ID, err)
			case ok:
				a.stranded.answeredWith(w.ID)
				return lease, true, nil, nil
			}
			// The key has no lease (only an ended pending lease gives its
			// key up): nobody can have replayed this handoff, so it is
			// nobody's, as an unkeyed one's.
			a.log.Info("a handoff from the line lost a lease before it was collected; the waiter goes back in line",
				"waiter", w.ID, "pool", req.Selector.Pool, "handed", len(leases), "count", req.Count)
			return Lease{}, false, leases, nil
		} else {
			// Pending (nobody's answer yet) or unkeyed (nobody else can
			// have been told of it): confirming or answering the rest would
			// be 201 with less than was asked, and a pending group's key
			// went with its ended lease. No answer: back in line, the rest
			// given back.
			a.log.Info("a handoff from the line lost a lease before it was collected; the waiter goes back in line",
				"waiter", w.ID, "pool", req.Selector.Pool, "handed", len(leases), "count", req.Count)
			return Lease{}, false, leases, nil
		}
	}
	if a.cfg.ProbeOnHandoff && (ctx.Err() == nil || req.IdempotencyKey != "") {
		// A keyed request whose client left still probes (each probe
		// bounded by ProbeTimeout): the confirm below makes the leases its
		// retry's answer, which must not be a device nobody probed.
		probeCtx := ctx
		if req.IdempotencyKey != "" {
			probeCtx = context.WithoutCancel(ctx)
		}
		if good, failed, unended := a.probeHanded(probeCtx, rows); failed {
			if unended {
				// A failed device's lease could not be ended: the re-check
				// gives it back (what is still pending of it, for a keyed
				// request), or nobody would until its TTL.
				a.stranded.add(w.ID, req.IdempotencyKey != "")
			}
			return Lease{}, false, append([]Lease{}, good...), nil
		}
	}
	if ctx.Err() != nil && req.IdempotencyKey == "" {
		for _, l := range leases {
			a.abandonHanded(l, w.ID)
		}
		return Lease{}, false, nil, ctx.Err()
	}
	if a.cfg.ProbeOnHandoff {
		// Confirmed before the answer: until then a retry of this request
		// waits rather than replay a lease the probe may yet take back.
		if err := a.confirmHandoff(ctx, req, w, leases); err != nil {
			if errors.Is(err, errHandoffEnded) {
				// Revoked or reaped during the probe: no answer; back in
				// line, the rest given back.
				return Lease{}, false, leases, nil
			}
			return Lease{}, false, nil, err
		}
		if ctx.Err() != nil && req.IdempotencyKey == "" {
			// The client left while the confirm waited (on a row lock):
			// nobody will read this answer, and no retry will replay it.
			for _, l := range leases {
				a.abandonHanded(l, w.ID)
			}
			return Lease{}, false, nil, ctx.Err()
		}
	}
	// The answer: these leases are the client's, and no re-check may give
	// them back, whatever marked this waiter (see strandedWaiters).
	a.stranded.answeredWith(w.ID)
	return answerOf(leases), false, nil, nil
}

// errHandoffEnded: a lease handed to the waiter ended before its handoff
// was confirmed; the handoff is no answer.
var errHandoffEnded = errors.New("a handed lease ended before its handoff was confirmed")

// confirmHandoff clears handoff_pending on the leases handed to w (all or
// none), making them replayable. When the statement fails, whether it
// committed is unknown: the leases go to the re-checker, which gives back
// those still pending (a retry then acquires afresh) and keeps confirmed
// ones for the retry's replay, and the client gets the (transient) error.
//
// The confirm starts the leases' TTL over (the probe does not eat it), so
// the answer carries the new expires_at: leases are updated in place.
func (a *Allocator) confirmHandoff(ctx context.Context, req AcquireRequest, w *wake.Waiter, leases []Lease) error {
	ids := make([]uuid.UUID, len(leases))
	for i, l := range leases {
		ids[i] = l.ID
	}
	stmtCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), queueBound)
	defer cancel()
	c, err := a.q.ConfirmHandoff(stmtCtx, ids)
	if err != nil {
		err = fmt.Errorf("confirm the handoff to waiter %s: %w", w.ID, err)
		a.giveBackUnread(req, w, err)
		return err
	}
	if !c.Confirmed {
		a.log.Info("a lease handed over from the line ended during its probe; the waiter goes back in line", "waiter", w.ID, "pool", req.Selector.Pool)
		return errHandoffEnded
	}
	for i := range leases {
		leases[i].HandoffPending = false
		leases[i].ExpiresAt = c.ExpiresAt
	}
	return nil
}

// giveBackUnread hands the leases a served waiter could not collect (err)
// to the re-checker: its client is answered with an error, so nobody would
// hold them until their TTL. The re-checker reads and ends them on its next
// pass (retrying while the database refuses), as it does for a stranded
// row; a keyed request's leases stay, for its retry to replay.
func (a *Allocator) giveBackUnread(req AcquireRequest, w *wake.Waiter, err error) {
	a.log.Warn("a served waiter could not collect its leases; the re-check gives them back", "waiter", w.ID, "pool", req.Selector.Pool, "err", err)
	a.stranded.add(w.ID, req.IdempotencyKey != "")
}

// answers reports whether the answer lease carries the lease id (as
// itself or in its group): such a lease is the client's, never given back.
func answers(answer Lease, id uuid.UUID) bool {
	if answer.ID == id {
		return true
	}
	for _, g := range answer.Group {
		if g.ID == id {
			return true
		}
	}
	return false
}

// answerOf is the acquire's answer: the lease, or for a group the first
// lease (by device name) carrying them all; a replay answers the same.
func answerOf(leases []Lease) Lease {
	first := leases[0]
	if first.GroupID != nil {
		first.Group = leases
	}
	return first
}

// probeHanded probes the devices handed over (ProbeOnHandoff). If any fails,
// the failed ones go offline (their leases end as probe_failed) and good
// lists the leases of the others; unended says a failed one's lease could
// not be ended.
func (a *Allocator) probeHanded(ctx context.Context, rows []dbsqlc.WaiterLeasesRow) (good []Lease, failed, unended bool) {
	errs := make([]error, len(rows))
	for i, r := range rows {
		if r.DeviceProbe == nil || r.DeviceAddress == nil || probe.Kind(*r.DeviceProbe) == probe.None {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, a.cfg.ProbeTimeout)
		errs[i] = a.probe(pctx, *r.DeviceProbe, *r.DeviceAddress)
		cancel()
		if ctx.Err() != nil {
			// Cut because the client left, not because the device failed:
			// no verdict on it (the caller gives the leases back), and a
			// healthy device must not go offline for it.
			return nil, false, false
		}
		failed = failed || errs[i] != nil
	}
	if !failed {
		return nil, false, false
	}
	stmtCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), queueBound)
	defer cancel()
	for i, r := range rows {
		l := r.DevallocLease
		if errs[i] == nil {
			good = append(good, leaseFromRow(l, nil))
			continue
		}
		a.log.Info("device handed over from the line failed its probe; taking it offline", "device", l.DeviceName, "pool", l.Pool, "err", errs[i])
		fail := dbsqlc.FailHandedLeaseParams{ID: l.ID, Reason: errs[i].Error(), RetryInSeconds: a.cfg.HealthBackoffMin.Seconds()}
		_, err := a.q.FailHandedLease(stmtCtx, fail)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) && stmtCtx.Err() == nil {
			// Once more: left active, the lease would keep a keyed
			// retry waiting on it and the device from going offline.
			_, err = a.q.FailHandedLease(stmtCtx, fail)
		}
		if errors.Is(err, pgx.ErrNoRows) {
			continue // ended meanwhile (revoked, taken back): nothing to end
		}
		if err != nil {
			// The caller marks the waiter for the re-check, which gives
			// the lease back; the waiter still goes back in line.
			a.log.Error("could not end a lease whose device failed its probe", "lease", l.ID, "err", err)
			unended = true
		}
	}
	return good, true, unended
}

// groupOf fills in lease.Group when the lease belongs to a group.
func (a *Allocator) groupOf(ctx context.Context, lease Lease) (Lease, error) {
	if lease.GroupID == nil {
		return lease, nil
	}
	rows, err := a.q.GroupLeases(ctx, lease.GroupID)
	if err != nil {
		return Lease{}, fmt.Errorf("leases of group %s: %w", lease.GroupID, err)
	}
	group := make([]Lease, 0, len(rows))
	for _, r := range rows {
		l, err := leaseFromHanded(dbsqlc.WaiterLeasesRow(r))
		if err != nil {
			return Lease{}, err
		}
		group = append(group, l)
	}
	lease.Group = group
	return lease, nil
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
