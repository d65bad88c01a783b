package rawsql

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// errStopped ends a client's loop when its run time was up before it got a
// device. It is not a failure, and the cycle does not count.
var errStopped = errors.New("run time is up")

// acquire leases a device to client c, retrying while the design finds
// none (each such attempt adds one to retries) until c's run time is up.
func (q *queries) acquire(ctx context.Context, c client, l *ledger, retries *atomic.Int64) (dev, lease int64, err error) {
	for {
		dev, lease, ok, err := q.tryAcquire(ctx, c, l)
		if err != nil || ok {
			return dev, lease, err
		}
		retries.Add(1)
		if time.Now().After(c.deadline) {
			return 0, 0, errStopped
		}
	}
}

// tryAcquire is one acquire transaction. ok is false when the design found
// no device for c; the transaction is then rolled back.
func (q *queries) tryAcquire(ctx context.Context, c client, l *ledger) (dev, lease int64, ok bool, err error) {
	tx, err := c.conn.Begin(ctx)
	if err != nil {
		return 0, 0, false, fmt.Errorf("begin acquire: %w", err)
	}
	// After Commit this is a no-op that sends nothing.
	defer func() { _ = tx.Rollback(ctx) }()
	dev, ok, err = q.pickDevice(ctx, tx)
	if err != nil || !ok {
		return 0, 0, false, err
	}
	lease, ok, err = q.leaseDevice(ctx, tx, dev, c.id, l)
	if err != nil || !ok {
		return 0, 0, false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, 0, false, fmt.Errorf("commit acquire: %w", err)
	}
	return dev, lease, true, nil
}

// pickDevice is the first half of an acquire: the design's lock, if any,
// and the pick of an idle device. ok is false when the pick found none.
func (q *queries) pickDevice(ctx context.Context, tx pgx.Tx) (dev int64, ok bool, err error) {
	if q.lockPool != "" {
		if _, err := tx.Exec(ctx, q.lockPool); err != nil {
			return 0, false, fmt.Errorf("lock pool: %w", err)
		}
	}
	err = tx.QueryRow(ctx, q.pick).Scan(&dev)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("pick device: %w", err)
	}
	return dev, true, nil
}

// leaseDevice is the second half of an acquire: mark dev leased and insert
// the lease. ok is false when a guarded UPDATE found dev no longer idle.
//
// The ledger learns of the lease right after the UPDATE, while tx holds
// dev's row lock and before anyone can see the lease: a correct design lets
// no other client that far until the previous holder's release, which
// leaves the ledger before its own COMMIT (queries.release), has committed.
func (q *queries) leaseDevice(ctx context.Context, tx pgx.Tx, dev int64, holder int, l *ledger) (lease int64, ok bool, err error) {
	tag, err := tx.Exec(ctx, q.markLeased, dev)
	if err != nil {
		return 0, false, fmt.Errorf("mark device %d leased: %w", dev, err)
	}
	if tag.RowsAffected() == 0 {
		if q.guarded {
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("mark device %d leased: no such device", dev)
	}
	if err := l.take(dev); err != nil {
		return 0, false, err
	}
	if err := tx.QueryRow(ctx, q.insertLease, dev, holder).Scan(&lease); err != nil {
		return 0, false, fmt.Errorf("insert lease on device %d: %w", dev, err)
	}
	return lease, true, nil
}

// release ends lease and makes dev idle again in one transaction, the same
// for every design. notify, when not nil, holds pg_notify's channel and
// payload; it is sent inside the transaction just before COMMIT, where
// raw-cycle.sql sends it and devalloc's trigger fires.
//
// The ledger forgets the lease after the UPDATE of dev and before COMMIT,
// while tx still holds dev's row lock, so no correct design can have handed
// dev to another client yet.
func (q *queries) release(ctx context.Context, conn *pgx.Conn, dev, lease int64, l *ledger, notify []any) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin release: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, q.endLease, lease); err != nil {
		return fmt.Errorf("end lease %d: %w", lease, err)
	}
	if _, err := tx.Exec(ctx, q.markIdle, dev); err != nil {
		return fmt.Errorf("mark device %d idle: %w", dev, err)
	}
	l.drop(dev)
	if notify != nil {
		if _, err := tx.Exec(ctx, notifySQL, notify...); err != nil {
			return fmt.Errorf("notify release of lease %d: %w", lease, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit release: %w", err)
	}
	return nil
}
