package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// Group returns every lease of a group acquire (active or ended), in
// device name order; ErrNotFound if no lease has that group id.
func (a *Allocator) Group(ctx context.Context, id uuid.UUID) ([]Lease, error) {
	rows, err := a.q.GroupLeases(ctx, &id)
	if err != nil {
		return nil, fmt.Errorf("leases of group %s: %w", id, err)
	}
	if len(rows) == 0 {
		return nil, ErrNotFound
	}
	out := make([]Lease, 0, len(rows))
	for _, r := range rows {
		l, err := leaseFromHanded(dbsqlc.WaiterLeasesRow(r))
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

// EndGroup ends every active lease of a group in one transaction (reason:
// EndReleased by its owner, EndRevoked by an admin) and returns the group
// as it is afterwards. Each freed device goes to the line as a single
// release's would, all in the one commit. Ending a group whose leases have
// all ended already changes nothing.
func (a *Allocator) EndGroup(ctx context.Context, id uuid.UUID, reason string) ([]Lease, error) {
	ended, err := a.endGroup(ctx, id, reason)
	for attempt := 1; attempt < endLeaseAttempts && isIdempotencyConflict(err) && ctx.Err() == nil; attempt++ {
		// A freed device was handed to a keyed waiter whose retry a direct
		// acquire granted meanwhile (see endLease); the statement failed,
		// and with it the transaction. Again: it now sees that lease (the
		// next keyed waiter may race the same way).
		ended, err = a.endGroup(ctx, id, reason)
	}
	if err != nil {
		return nil, fmt.Errorf("end group %s (%s): %w", id, reason, err)
	}
	// After commit: a waiter told of its devices reads them at once.
	for _, r := range ended {
		a.endedLease(r)
	}
	return a.Group(ctx, id)
}

// endGroup ends the group's active leases in one transaction.
func (a *Allocator) endGroup(ctx context.Context, id uuid.UUID, reason string) ([]dbsqlc.EndLeaseRow, error) {
	var ended []dbsqlc.EndLeaseRow
	err := inTx(ctx, a.pool, func(tx pgx.Tx) error {
		q := a.q.WithTx(tx)
		active, err := q.GroupLeaseIDs(ctx, &id)
		if err != nil {
			return err
		}
		for _, l := range active {
			r, err := q.EndLease(ctx, dbsqlc.EndLeaseParams{ID: l.ID, EndReason: reason})
			if errors.Is(err, pgx.ErrNoRows) {
				continue // ended meanwhile (expired, by the reaper)
			}
			if err != nil {
				return err
			}
			ended = append(ended, r)
		}
		return nil
	})
	return ended, err
}

// RenewGroup extends every active lease of owner's group by ttl (the
// default when 0) from now. It fails with ErrNotFound when the group has
// no active, unlapsed lease of owner's.
func (a *Allocator) RenewGroup(ctx context.Context, id uuid.UUID, owner string, ttl time.Duration) ([]Lease, error) {
	if ttl <= 0 {
		ttl = a.cfg.DefaultTTL
	}
	rows, err := a.q.RenewGroup(ctx, dbsqlc.RenewGroupParams{GroupID: &id, Owner: owner, TtlSeconds: ttl.Seconds()})
	if err != nil {
		return nil, fmt.Errorf("renew group %s: %w", id, err)
	}
	if len(rows) == 0 {
		return nil, a.groupNotRenewed(ctx, id, owner)
	}
	return a.Group(ctx, id)
}

// groupNotRenewed explains a group renew that renewed nothing: the group is
// not owner's or has no active lease (ErrNotFound), or it is a handoff
// still under its waiter's probe, nobody's answer yet (503, retry later,
// as a renew of one of its leases: see endedError).
func (a *Allocator) groupNotRenewed(ctx context.Context, id uuid.UUID, owner string) error {
	leases, err := a.Group(ctx, id)
	if err != nil {
		return err
	}
	for _, l := range leases {
		if l.Owner == owner && renewRefusedForNow(l) {
			return fmt.Errorf("group %s: %w", id, errLeaseUnderProbe)
		}
	}
	return ErrNotFound
}
