package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/devalloctype"
	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// GetLease returns a lease, active or ended.
func (a *Allocator) GetLease(ctx context.Context, id uuid.UUID) (Lease, error) {
	r, err := a.q.GetLease(ctx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return Lease{}, ErrNotFound
	}
	if err != nil {
		return Lease{}, fmt.Errorf("get lease %s: %w", id, err)
	}
	return a.withDevice(ctx, r)
}

// LeaseFilter narrows ListLeases; empty fields match everything.
type LeaseFilter struct {
	ActiveOnly bool
	Pool       string
	Owner      string
	// After is the sort key the previous page ended with; nil starts at the
	// newest lease.
	After *LeaseKey
	// Limit is the page size: 0 means DefaultPageSize, at most MaxPageSize.
	Limit int
}

// LeaseKey is a lease's place in the list order: newest acquired_at first,
// then descending id among equal times.
type LeaseKey struct {
	AcquiredAt time.Time
	ID         uuid.UUID
}

// LeasePage is one page of leases, newest first.
type LeasePage struct {
	Leases []Lease
	// Next is the After of the following page; nil on the last page.
	Next *LeaseKey
}

// ListLeasesPage returns one page of leases, newest first (keyset
// pagination: each page costs the same however far in it is).
func (a *Allocator) ListLeasesPage(ctx context.Context, f LeaseFilter) (LeasePage, error) {
	limit := pageSize(f.Limit)
	params := dbsqlc.ListLeasesParams{
		ActiveOnly: f.ActiveOnly,
		Pool:       optional(f.Pool),
		Owner:      optional(f.Owner),
		MaxRows:    int32(limit + 1), // one more tells whether a next page exists
	}
	if f.After != nil {
		params.AfterAcquiredAt, params.AfterID = &f.After.AcquiredAt, &f.After.ID
	}
	rows, err := a.q.ListLeases(ctx, params)
	if err != nil {
		return LeasePage{}, fmt.Errorf("list leases: %w", err)
	}
	more := len(rows) > limit
	if more {
		rows = rows[:limit]
	}
	page := LeasePage{Leases: make([]Lease, 0, len(rows))}
	for _, r := range rows {
		var dev *Device
		if r.DeviceAddress != nil { // NULL: the device was deleted since
			labels, err := devalloctype.DecodeLabels(r.DeviceLabels)
			if err != nil {
				return LeasePage{}, fmt.Errorf("lease %s device labels: %w", r.DevallocLease.ID, err)
			}
			dev = &Device{Labels: labels, Address: *r.DeviceAddress}
		}
		page.Leases = append(page.Leases, leaseFromRow(r.DevallocLease, dev))
	}
	if more {
		last := rows[len(rows)-1].DevallocLease
		page.Next = &LeaseKey{AcquiredAt: last.AcquiredAt, ID: last.ID}
	}
	return page, nil
}

// ListLeases returns the first page of leases, newest first (see
// ListLeasesPage).
func (a *Allocator) ListLeases(ctx context.Context, f LeaseFilter) ([]Lease, error) {
	page, err := a.ListLeasesPage(ctx, f)
	return page.Leases, err
}

// Renew extends an active lease by ttl (the default when 0) from now, by
// the database clock. An ended or lapsed lease fails with a
// *LeaseEndedError (or ErrNotFound).
func (a *Allocator) Renew(ctx context.Context, id uuid.UUID, ttl time.Duration) (Lease, error) {
	if ttl <= 0 {
		ttl = a.cfg.DefaultTTL
	}
	r, err := a.q.RenewLease(ctx, dbsqlc.RenewLeaseParams{ID: id, TtlSeconds: ttl.Seconds()})
	if errors.Is(err, pgx.ErrNoRows) {
		return Lease{}, a.endedError(ctx, id)
	}
	if err != nil {
		return Lease{}, fmt.Errorf("renew lease %s: %w", id, err)
	}
	return a.withDevice(ctx, r)
}

// Release ends a lease and frees its device. Releasing a lease that was
// already released succeeds again (a retried DELETE); one that expired or
// was revoked fails with a *LeaseEndedError, so its holder learns it had
// lost the device.
func (a *Allocator) Release(ctx context.Context, id uuid.UUID) (Lease, error) {
	return a.end(ctx, id, EndReleased)
}

// ReleaseOwn is Release for the lease's owner, in one statement (ownership
// is checked by the statement itself): the common release. done is false,
// and nothing changed, when id is not an active lease of owner's (unknown,
// someone else's, already ended): Release or Revoke tell those apart. A
// lease that lapsed before the call ends as expired and fails with a
// *LeaseEndedError, as in Release.
func (a *Allocator) ReleaseOwn(ctx context.Context, id uuid.UUID, owner string) (done bool, err error) {
	r, err := endLease(ctx, a.q, dbsqlc.EndLeaseParams{ID: id, EndReason: EndReleased, Owner: &owner})
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("release lease %s: %w", id, err)
	}
	row := a.endedLease(r)
	if row.EndReason != nil && *row.EndReason != EndReleased {
		lease, err := a.withDevice(ctx, row)
		if err != nil {
			return false, err
		}
		return false, &LeaseEndedError{Lease: lease}
	}
	return true, nil
}

// Revoke ends someone else's lease (an admin's decision) and frees its device.
func (a *Allocator) Revoke(ctx context.Context, id uuid.UUID) (Lease, error) {
	return a.end(ctx, id, EndRevoked)
}

func (a *Allocator) end(ctx context.Context, id uuid.UUID, reason string) (Lease, error) {
	r, err := endLease(ctx, a.q, dbsqlc.EndLeaseParams{ID: id, EndReason: reason})
	if errors.Is(err, pgx.ErrNoRows) {
		err := a.endedError(ctx, id)
		var ended *LeaseEndedError
		if errors.As(err, &ended) && ended.Lease.EndReason == reason {
			return ended.Lease, nil
		}
		return Lease{}, err
	}
	if err != nil {
		return Lease{}, fmt.Errorf("end lease %s (%s): %w", id, reason, err)
	}
	lease, err := a.withDevice(ctx, a.endedLease(r))
	if err != nil {
		return Lease{}, err
	}
	if lease.EndReason != reason {
		// It had lapsed before this call; EndLease recorded it as expired.
		return Lease{}, &LeaseEndedError{Lease: lease}
	}
	return lease, nil
}

// endedError explains why a lease could not be renewed or ended: it does
// not exist, or it has ended (or lapsed, awaiting the reaper).
func (a *Allocator) endedError(ctx context.Context, id uuid.UUID) error {
	lease, err := a.GetLease(ctx, id)
	if err != nil {
		return err
	}
	if renewRefusedForNow(lease) {
		return fmt.Errorf("lease %s: %w", id, errLeaseUnderProbe)
	}
	if lease.Active() {
		// Lapsed but not reaped yet: to its holder it is as good as expired.
		lease.EndReason = EndExpired
	}
	return &LeaseEndedError{Lease: lease}
}

// renewRefusedForNow tells, of a lease a renew did not extend, whether the
// renew was refused for now (503, retry later) rather than because the
// lease ended. Handed from the line, its waiter still probing: nobody's
// answer yet, and it may be taken back; not renewed. Past its first
// expires_at too: the confirm starts its TTL over (migrations/00020), so
// "expired" would be taken back by a 201. Active, not pending and not
// lapsed: the confirm committed between the renew and this read; the
// renew's retry will succeed.
func renewRefusedForNow(l Lease) bool {
	return l.Active() && (l.HandoffPending || l.ExpiresAt.After(time.Now()))
}

// withDevice fills in the lease's device details from the devices table.
func (a *Allocator) withDevice(ctx context.Context, r dbsqlc.DevallocLease) (Lease, error) {
	if r.DeviceID == nil {
		return leaseFromRow(r, nil), nil
	}
	dev, err := a.deviceByID(ctx, *r.DeviceID)
	if err != nil {
		return Lease{}, err
	}
	return leaseFromRow(r, dev), nil
}

// deviceByID returns the device, or nil when it was deleted since.
func (a *Allocator) deviceByID(ctx context.Context, id int64) (*Device, error) {
	r, err := a.q.GetDeviceByID(ctx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get device %d: %w", id, err)
	}
	d, err := deviceFromRow(r)
	if err != nil {
		return nil, err
	}
	return &d, nil
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// Page sizes of the list operations.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// pageSize turns a requested page size into the one used.
func pageSize(n int) int {
	switch {
	case n <= 0:
		return DefaultPageSize
	case n > MaxPageSize:
		return MaxPageSize
	}
	return n
}
