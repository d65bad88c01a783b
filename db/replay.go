package db

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// replayWithin returns the lease the owner already got with req's key, if
// any (ok true), or ErrIdempotencyKeyReused if that lease was for a
// different request. Each database call is bounded by bound (see
// attemptBound; none when <= 0).
//
// A lease handed from the line whose waiter is still probing it
// (handoff_pending) is no answer yet: the probe may fail, and the lease end
// or be given back. replayWithin waits for it to settle, however long its
// statements' bound: confirmed, it is the answer; ended, its key was given
// up with it and there is none (ok false: the request goes on as if no
// lease had the key). Still pending after handoffSettleBound (its waiter's
// instance died, or is stuck), it is taken back (takeBackUnsettled) and
// the request goes on without it; only if that fails is the answer
// errHandoffUnsettled (transient: 503, retry later). Every replay goes
// through here, so none answers with a pending lease.
func (a *Allocator) replayWithin(ctx context.Context, req AcquireRequest, bound time.Duration) (lease Lease, ok bool, err error) {
	r, found, err := a.settledKeyLease(ctx, req, bound)
	if err != nil || !found {
		return Lease{}, false, err
	}
	stmtCtx, cancel := boundedBy(ctx, bound)
	defer cancel()
	lease, err = a.withDevice(stmtCtx, r)
	if err != nil {
		return Lease{}, false, err
	}
	if lease, err = a.groupOf(stmtCtx, lease); err != nil {
		return Lease{}, false, err
	}
	if len(lease.Group) > 0 {
		// A group's answer is its lease on the first device by name (see
		// answerOf), whichever of its leases carries the key: a retry gets
		// the lease id the first answer gave.
		answer := lease.Group[0]
		answer.Group = lease.Group
		lease = answer
	}
	return lease, true, nil
}

// boundedBy is ctx with bound as its timeout, or ctx itself (cancellable)
// when bound <= 0.
func boundedBy(ctx context.Context, bound time.Duration) (context.Context, context.CancelFunc) {
	if bound <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, bound)
}

// errHandoffUnsettled: the key's lease is a handoff whose probe did not
// settle in time; the retry is answered "unavailable, retry later", never
// with that lease.
var errHandoffUnsettled = errors.New("the lease of this idempotency key is a handoff still under probe")

// errLeaseUnderProbe: a renew named a lease whose handoff is still under
// its waiter's probe; nobody was told of it yet (transient: 503).
var errLeaseUnderProbe = errors.New("the lease is a handoff still under its waiter's probe")

// handoffPoll is how often a replay looks again at a pending handoff.
const handoffPoll = 20 * time.Millisecond

// handoffSettleBound is how long a replay waits for a pending handoff of
// count devices: its waiter probes them one after the other, each within
// ProbeTimeout, then confirms in one statement.
func (a *Allocator) handoffSettleBound(count int) time.Duration {
	return time.Duration(max(count, 1)+1)*a.cfg.ProbeTimeout + time.Second
}

// settledKeyLease reads the lease with req's key, waiting while it is a
// pending handoff (see replayWithin). Still pending after handoffSettleBound,
// the handoff is taken back once (takeBackUnsettled) and read again.
func (a *Allocator) settledKeyLease(ctx context.Context, req AcquireRequest, stmtBound time.Duration) (dbsqlc.DevallocLease, bool, error) {
	var deadline time.Time
	var pending uuid.UUID // the handoff deadline is for
	tookBack := false
	for {
		stmtCtx, cancel := boundedBy(ctx, stmtBound)
		r, err := a.q.GetLeaseByIdempotencyKey(stmtCtx, dbsqlc.GetLeaseByIdempotencyKeyParams{
			Owner: req.Owner, IdempotencyKey: req.IdempotencyKey,
		})
		cancel()
		if errors.Is(err, pgx.ErrNoRows) {
			return r, false, nil
		}
		if err != nil {
			return r, false, fmt.Errorf("look up idempotency key of %q: %w", req.Owner, err)
		}
		// Before any wait: another request with this key is refused at
		// once and changes nothing, least of all the key's handoff.
		// NULL: recorded before fingerprints existed; the key alone decides.
		if r.RequestFingerprint != nil && !bytes.Equal(r.RequestFingerprint, req.fingerprint) {
			return r, false, ErrIdempotencyKeyReused
		}
		if !r.HandoffPending {
			return r, true, nil
		}
		if r.ID != pending {
			// A new handoff of the key (its waiter went back in line and
			// was served again) gets its own bound.
			pending, tookBack = r.ID, false
			deadline = time.Now().Add(a.handoffSettleBound(req.Count))
		}
		if !time.Now().Before(deadline) {
			if tookBack {
				return r, false, fmt.Errorf("replay lease %s of %q: %w", r.ID, req.Owner, errHandoffUnsettled)
			}
			tookBack = true
			if err := a.takeBackUnsettled(ctx, r, stmtBound); err != nil {
				return r, false, fmt.Errorf("replay lease %s of %q: %w (%w)", r.ID, req.Owner, errHandoffUnsettled, err)
			}
			continue
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				// The caller's bound, not the client: the same answer.
				return r, false, fmt.Errorf("replay lease %s of %q: %w", r.ID, req.Owner, errHandoffUnsettled)
			}
			return r, false, ctx.Err()
		case <-time.After(handoffPoll):
		}
	}
}

// takeBackUnsettled gives back a handoff still pending past its settle
// bound, with the other leases handed to the same waiter (a group): its
// waiter's instance died or hangs mid-probe, and would otherwise hold the
// devices, and the key, until their TTL while every retry is told 503.
// Nobody was told it has them. Each ends only while still pending,
// checked on the locked row (EndLease pending_only): a confirm that commits
// first makes them the answer, and one that comes after finds them ended
// (confirm_handoff is all or nothing) and sends its waiter back in line.
// Ending gives the key up (migrations/00018).
//
// Each statement is bounded like the request's others (stmtBound, else
// queueBound), and runs on even if the client leaves. When one fails, the
// waiter is marked for the re-check, which finishes the take-back: the
// first lease to end gave the group's key up, so no retry would meet the
// rest again.
func (a *Allocator) takeBackUnsettled(ctx context.Context, r dbsqlc.DevallocLease, stmtBound time.Duration) (err error) {
	if stmtBound <= 0 {
		stmtBound = queueBound
	}
	ctx = context.WithoutCancel(ctx)
	ids := []uuid.UUID{r.ID}
	if r.WaiterID != nil {
		defer func() {
			if err != nil {
				a.stranded.add(*r.WaiterID, true)
			}
		}()
		stmtCtx, cancel := context.WithTimeout(ctx, stmtBound)
		rows, err := a.q.WaiterLeases(stmtCtx, r.WaiterID)
		cancel()
		if err != nil {
			return fmt.Errorf("read the leases handed with %s: %w", r.ID, err)
		}
		// The key's lease first: ending another lease of a pending group
		// first would lock the key's lease too (migrations/00018's group
		// trigger), in an order that can deadlock with a confirm.
		ids = ids[:0]
		for _, h := range rows {
			if h.DevallocLease.HandoffPending && h.DevallocLease.ID != r.ID {
				ids = append(ids, h.DevallocLease.ID)
			}
		}
		if r.HandoffPending {
			ids = append([]uuid.UUID{r.ID}, ids...)
		}
	}
	a.log.Warn("a handoff still under probe past its bound is taken back: its waiter's instance is gone or stuck",
		"lease", r.ID, "pool", r.Pool, "owner", r.Owner, "leases", len(ids))
	for _, id := range ids {
		stmtCtx, cancel := context.WithTimeout(ctx, stmtBound)
		err := a.giveBackStranded(stmtCtx, id, true)
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
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
