package db

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/wake"
)

// unprobed is what the one-statement acquire found.
type unprobed int

const (
	// unprobedGranted: the lease exists.
	unprobedGranted unprobed = iota
	// unprobedNoneIdle: nothing fitting was idle and unlocked.
	unprobedNoneIdle
	// unprobedNeedsProbe: the device at the head of the line needs a probe,
	// which only the acquire transaction can do.
	unprobedNeedsProbe
	// unprobedQueued: others wait in the pool's line; nothing was picked.
	unprobedQueued
)

// attemptUnprobed runs the whole acquire as one autocommitted statement
// (GrantUnprobed): one round trip, one commit. It cannot probe, so it
// grants only devices whose probe is "none" or fresh.
//
// The statement runs to completion even if ctx ends (its commit is its
// end, and an interrupted commit would leave us not knowing whether the
// lease exists); bound caps it, as it caps the transaction's statements. A
// requester that left meanwhile has its lease ended at once, as in grant.
func (a *Allocator) attemptUnprobed(ctx context.Context, req AcquireRequest, bound time.Duration) (Lease, unprobed, error) {
	sel := req.Selector
	leaseID, err := uuid.NewV7()
	if err != nil {
		return Lease{}, 0, fmt.Errorf("lease id: %w", err)
	}
	var idem *string
	if req.IdempotencyKey != "" {
		idem = &req.IdempotencyKey
	}
	stmtCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bound)
	defer cancel()
	row, err := a.q.GrantUnprobed(stmtCtx, dbsqlc.GrantUnprobedParams{
		Pool:               sel.Pool,
		Labels:             sel.Labels.JSON(),
		LeaseID:            leaseID,
		FreshSeconds:       a.cfg.ProbeFreshness.Seconds(),
		Owner:              req.Owner,
		Holder:             req.Holder,
		TtlSeconds:         req.TTL.Seconds(),
		IdempotencyKey:     idem,
		RequestFingerprint: req.fingerprint,
	})
	if isIdempotencyConflict(err) {
		// The statement rolled back, so the device it picked is idle still;
		// which one is unknown, so any waiter of the pool may look.
		return Lease{}, 0, keyTaken{event: wake.IdleEvent{Pool: sel.Pool}}
	}
	if err != nil {
		return Lease{}, 0, fmt.Errorf("acquire in pool %q: grant: %w", sel.Pool, err)
	}
	switch {
	case row.Queued:
		return Lease{}, unprobedQueued, nil
	case row.PickedID == nil:
		return Lease{}, unprobedNoneIdle, nil
	case row.ID == nil:
		return Lease{}, unprobedNeedsProbe, nil
	}
	lease, err := leaseFromUnprobed(row)
	if err != nil {
		return Lease{}, 0, err
	}
	if ctx.Err() != nil && req.IdempotencyKey == "" {
		a.abandon(lease)
		return Lease{}, 0, ctx.Err()
	}
	return lease, unprobedGranted, nil
}
