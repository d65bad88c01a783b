package db

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/probe"
	"github.com/devalloc/devalloc/db/wake"
)

// A handoff is a device given to a waiter by someone else's transaction (a
// release, a dispatch, a recovery). The waiter's instance hears of it
// (db/wake), collects the leases, probes them when ProbeOnHandoff asks,
// confirms them (clearing handoff_pending, migrations/00018 and 00020) and
// answers; what it cannot answer with goes back to the line.

// takeHandoff takes what the line handed w (collect): the answer, or a
// place back in line (back true) when w's row went without a lease (its
// instance was taken for dead while cut off), or what was handed cannot be
// the answer (a device failed its probe, a lease ended before it was read
// or confirmed: collect's giveBack). Then w goes back to its old place (at;
// the end of the line when at is nil, an earlier try of the join having
// been served), and the devices that answered go back to the line. With a
// key, a lease a retry got meanwhile is the answer instead.
func (a *Allocator) takeHandoff(ctx context.Context, req AcquireRequest, w *wake.Waiter, at *place, window waitWindow) (lease Lease, replayed, back bool, err error) {
	lease, replayed, giveBack, err := a.collect(ctx, req, w)
	if errors.Is(err, errDropped) && window.remaining() > 0 && ctx.Err() == nil && !a.isDraining() {
		a.log.Warn("a waiting request lost its place in line; putting it back", "pool", req.Selector.Pool, "waiter", w.ID)
		if err := a.rejoin(ctx, req, w, at, window); err != nil {
			lease, replayed, err := a.rejoinFailed(ctx, req, window, err)
			return lease, replayed, false, err
		}
		return Lease{}, false, true, nil
	}
	if giveBack == nil {
		return lease, replayed, false, err
	}
	handedTo := w.ID // before a rejoin renames w
	// A handed-over device failed its probe (or its lease ended during the
	// probe). Its key was given up with the handoff, so a retry may have
	// got a lease with it meanwhile (elsewhere): that is the answer, rather
	// than a place in line its key keeps from being served.
	if req.IdempotencyKey != "" {
		if lease, ok, rerr := a.replayWithin(ctx, req, attemptBoundSlack); rerr == nil && ok {
			for _, l := range giveBack {
				if !answers(lease, l.ID) {
					a.abandonHanded(l, handedTo)
				}
			}
			return lease, true, false, nil
		}
	}
	// Back to the same place first, then the devices that answered go back
	// to the line, whose head this waiter may well be.
	err = a.rejoin(ctx, req, w, at, window)
	a.abandonAllHanded(giveBack, handedTo)
	if err != nil {
		lease, replayed, err := a.rejoinFailed(ctx, req, window, err)
		return lease, replayed, false, err
	}
	a.dispatch(ctx, req.Selector.Pool, a.attemptBound(window.remaining()))
	return Lease{}, false, true, nil
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
			// key up): nobody can have replayed this handoff.
		}
		// Pending (nobody's answer yet), unkeyed (nobody else can have been
		// told of it) or keyless now: confirming or answering the rest
		// would be 201 with less than was asked, and a pending group's key
		// went with its ended lease. No answer: back in line, the rest
		// given back.
		a.log.Info("a handoff from the line lost a lease before it was collected; the waiter goes back in line",
			"waiter", w.ID, "pool", req.Selector.Pool, "handed", len(leases), "count", req.Count)
		return Lease{}, false, leases, nil
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
		a.abandonAllHanded(leases, w.ID)
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
			a.abandonAllHanded(leases, w.ID)
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
