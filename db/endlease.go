package db

import (
	"context"

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
