package db

import (
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/devalloc/devalloc/db/devalloctype"
)

// The errors the allocator answers with, defined in db/devalloctype.
var (
	ErrNotFound             = devalloctype.ErrNotFound
	ErrDeviceExists         = devalloctype.ErrDeviceExists
	ErrDeviceLeased         = devalloctype.ErrDeviceLeased
	ErrNoDevice             = devalloctype.ErrNoDevice
	ErrUnsatisfiable        = devalloctype.ErrUnsatisfiable
	ErrShuttingDown         = devalloctype.ErrShuttingDown
	ErrLeaseEnded           = devalloctype.ErrLeaseEnded
	ErrIdempotencyKeyReused = devalloctype.ErrIdempotencyKeyReused
	ErrKeyExists            = devalloctype.ErrKeyExists
	ErrUnknownKey           = devalloctype.ErrUnknownKey
)

// LeaseEndedError carries the ended lease (see devalloctype).
type LeaseEndedError = devalloctype.LeaseEndedError

// IsInvalidData reports whether PostgreSQL refused a value the caller gave
// (SQLSTATE class 22, data exception: text with NUL or bad encoding, a time
// out of range, ...). The input was wrong, not the server; callers that
// validate at the edge should rarely see it, and answer it as a client
// error when they do.
func IsInvalidData(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22")
}
