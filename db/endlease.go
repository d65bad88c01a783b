package db

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// endLeaseAttempts bounds how often endLease runs EndLease while it fails
// on the idempotency index. Each failure is one keyed waiter whose retry
// was granted directly at that very moment, so a few in a row are already
// unlikely; the bound only keeps a broken index from looping forever.
const endLeaseAttempts = 8

// endLease runs EndLease, again while it fails on the idempotency index.
// Handing the freed device to the line, the statement may grant a keyed
// waiter whose retry was granted directly (without the line) by a
// transaction that committed meanwhile: the insert then fails on the
// unique index and the whole statement rolls back, the lease it was asked
// to end included, so running it again is safe. Grants from the line
// serialise on the key among themselves (devalloc.claim_idempotency_key),
// but not with a direct acquire. Run again, the statement sees that
// committed lease and passes the waiter by, so the release, expiry or
// revocation happens rather than failing for a race its caller had no part
// in; the next waiter may race the same way (two keyed waiters in a row),
// hence the loop.
func endLease(ctx context.Context, q *dbsqlc.Queries, p dbsqlc.EndLeaseParams) (dbsqlc.EndLeaseRow, error) {
	r, err := q.EndLease(ctx, p)
	for attempt := 1; attempt < endLeaseAttempts && isIdempotencyConflict(err) && ctx.Err() == nil; attempt++ {
		r, err = q.EndLease(ctx, p)
	}
	return r, err
}

// endedLease is the lease an EndLease row describes, after telling whoever
// needs to know what the committed statement did with the device: the
// waiter it was handed to, the pool's dispatcher when a group waits for it,
// or waiters of a device that went idle (a device deleted, drained into
// maintenance or already given to someone else tells nobody).
func (a *Allocator) endedLease(r dbsqlc.EndLeaseRow) dbsqlc.DevallocLease {
	if r.EndReason != nil {
		a.log.Debug("lease ended", "lease", r.ID, "device", r.DeviceName, "pool", r.Pool, "owner", r.Owner, "reason", *r.EndReason)
	}
	switch {
	case r.HandedTo != nil:
		a.notifier.HandedOver([]uuid.UUID{*r.HandedTo})
	case r.GroupWaits:
		// Only the dispatcher gathers a group's devices.
		a.dispatch(context.Background(), r.Pool, queueBound)
	default:
		a.announceFreed(r.Pool, r.FreedDeviceID, r.FreedLabels, r.FreedState)
	}
	return dbsqlc.DevallocLease{
		ID: r.ID, DeviceID: r.DeviceID, DeviceName: r.DeviceName, Pool: r.Pool, Owner: r.Owner, Holder: r.Holder,
		FencingToken: r.FencingToken, AcquiredAt: r.AcquiredAt, ExpiresAt: r.ExpiresAt, ReleasedAt: r.ReleasedAt,
		EndReason: r.EndReason, IdempotencyKey: r.IdempotencyKey, ActiveDeviceID: r.ActiveDeviceID,
		RequestFingerprint: r.RequestFingerprint, GroupID: r.GroupID, WaiterID: r.WaiterID,
	}
}

// announceFreed tells waiters about the device a lease-ending statement
// freed: only when it freed one (not given to someone else, deleted) and
// the device went idle (not drained into maintenance).
func (a *Allocator) announceFreed(pool string, device *int64, labels []byte, state *string) {
	if device != nil && state != nil && *state == StateIdle {
		a.notifier.Freed(pool, *device, labels)
	}
}

// abandon ends a lease whose requester left before it could be handed over.
func (a *Allocator) abandon(lease Lease) { a.abandonFrom(lease, nil) }

// abandonHanded is abandon for leases the line handed to waiter: a
// give-back that fails is retried by the re-checker.
func (a *Allocator) abandonHanded(lease Lease, waiter uuid.UUID) { a.abandonFrom(lease, &waiter) }

// abandonAllHanded gives back every lease of leases handed to waiter.
func (a *Allocator) abandonAllHanded(leases []Lease, waiter uuid.UUID) {
	for _, l := range leases {
		a.abandonHanded(l, waiter)
	}
}

func (a *Allocator) abandonFrom(lease Lease, waiter *uuid.UUID) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A lease read as pending ends only while it still is: pending, it was
	// nobody's answer; confirmed since, it is someone's (see EndLease).
	r, err := endLease(ctx, a.q, dbsqlc.EndLeaseParams{ID: lease.ID, EndReason: EndReleased, PendingOnly: lease.HandoffPending})
	if err == nil {
		a.endedLease(r)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		// Ended already: a pending handoff revoked or reaped during its
		// probe, or given back by the re-checker. Nothing to give back.
		return
	}
	if err == nil {
		return
	}
	if waiter != nil {
		// Handed from the line to a waiter that is no longer anybody's
		// (its client left, or it went back in line under a new id): the
		// re-checker retries the give-back on its passes, as for a
		// stranded waiter, rather than leave the device to nobody until
		// the TTL. An unkeyed mark: these leases are nobody's answer.
		a.log.Warn("could not end an abandoned lease; the re-check retries", "lease", lease.ID, "device", lease.Device.Name, "err", err)
		a.stranded.add(*waiter, false)
		return
	}
	// A direct grant whose client left: the reaper reclaims it at expiry.
	a.log.Error("could not end an abandoned lease", "lease", lease.ID, "device", lease.Device.Name, "err", err)
}
