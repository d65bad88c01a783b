package db

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// idempotencyIndex is the unique index that allows one lease per owner and
// idempotency key (migration 00005).
const idempotencyIndex = "leases_owner_idempotency_key"

// AcquireOrReplay is Acquire, reporting also whether the lease is one an
// earlier request with the same idempotency key got (replayed) rather than
// one granted for this call.
//
// With req.IdempotencyKey set, the owner's requests with that key get one
// lease between them:
//   - a retry after the first request finished gets its lease as it is now,
//     active or ended;
//   - a retry while the first still runs at this instance joins it: both get
//     its outcome, and it keeps running while either caller is still there
//     (the first one's client going away is exactly why clients retry);
//   - a retry at another instance races the first for the key in the
//     database (a unique index): the loser rolls back, its device stays
//     idle, and it answers with the winner's lease;
//   - the same key with a different request (selector, TTL or holder; the
//     wait may differ) fails with ErrIdempotencyKeyReused, changing nothing.
//
// A lease with a key is not ended when its requester goes away before
// receiving it, as an unkeyed one is: the retry needs it.
func (a *Allocator) AcquireOrReplay(ctx context.Context, req AcquireRequest) (Lease, bool, error) {
	start := time.Now()
	lease, replayed, err := a.acquireOrReplay(ctx, req)
	a.cfg.Observer.AcquireDone(AcquireOutcome(replayed, err), time.Since(start))
	if err == nil {
		a.log.Debug("lease granted", "lease", lease.ID, "device", lease.Device.Name, "pool", lease.Device.Pool,
			"owner", lease.Owner, "holder", lease.Holder, "replayed", replayed, "took", time.Since(start))
	}
	return lease, replayed, err
}

func (a *Allocator) acquireOrReplay(ctx context.Context, req AcquireRequest) (Lease, bool, error) {
	req.Wait = min(max(req.Wait, 0), a.cfg.MaxWait)
	if req.IdempotencyKey == "" {
		return a.acquire(ctx, req, fixedWindow(time.Now().Add(req.Wait)))
	}
	// Before TTL defaults are applied: a retry is the same request when it
	// asks for the same thing, whatever the server's default is today.
	req.fingerprint = req.fingerprintOf()
	return a.acquireJoined(ctx, req)
}

// fingerprintOf is the SHA-256 of a canonical JSON of what decides which
// lease the request gets: selector, TTL and holder. Wait is left out, so a
// retry may wait longer or shorter for the same lease. The version member
// lets the format change without old fingerprints matching new ones by
// accident.
func (r AcquireRequest) fingerprintOf() []byte {
	canonical := struct {
		Version int             `json:"v"`
		Pool    string          `json:"pool"`
		Labels  json.RawMessage `json:"labels"` // sorted keys: see Labels.encode
		TTLMs   int64           `json:"ttl_ms"`
		Holder  string          `json:"holder"`
		// Left out for one device, so single requests keep the
		// fingerprints they had before groups existed.
		Count int `json:"count,omitempty"`
	}{1, r.Selector.Pool, r.Selector.Labels.JSON(), r.TTL.Milliseconds(), r.Holder, groupCount(r.Count)}
	b, _ := json.Marshal(canonical) // strings, numbers and valid JSON always marshal
	sum := sha256.Sum256(b)
	return sum[:]
}

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

func isIdempotencyConflict(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == idempotencyIndex
}

// groupCount is the count a fingerprint records: 0 for a single device.
func groupCount(n int) int {
	if n <= 1 {
		return 0
	}
	return n
}
