package db

import (
	"crypto/sha256"
	"encoding/json"
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

// idempotencyIndex is the unique index that allows one lease per owner and
// idempotency key (migration 00005).
const idempotencyIndex = "leases_owner_idempotency_key"

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
