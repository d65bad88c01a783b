package db

import (
	"context"

	"github.com/devalloc/devalloc/db/dbsqlc"
)

// endLease runs EndLease, and once more when it failed on the idempotency
// index. Handing the freed device to the line, the statement may grant a
// keyed waiter whose retry was granted directly (without the line) by a
// transaction that committed meanwhile: the insert then fails on the
// unique index and the whole statement rolls back, the lease it was asked
// to end included. Grants from the line serialise on the key among
// themselves (devalloc.claim_idempotency_key), but not with a direct
// acquire. Run again, the statement sees that committed lease and passes
// the waiter by, so the release, expiry or revocation happens rather than
// failing for a race its caller had no part in.
func endLease(ctx context.Context, q *dbsqlc.Queries, p dbsqlc.EndLeaseParams) (dbsqlc.EndLeaseRow, error) {
	r, err := q.EndLease(ctx, p)
	if isIdempotencyConflict(err) {
		r, err = q.EndLease(ctx, p)
	}
	return r, err
}
