package devalloctype

import (
	"errors"
	"fmt"
)

var (
	// ErrNotFound: no device or lease by that name or id.
	ErrNotFound = errors.New("not found")
	// ErrDeviceExists: a device with that name is registered already.
	ErrDeviceExists = errors.New("device already exists")
	// ErrDeviceLeased: the change needs a device that is not leased.
	ErrDeviceLeased = errors.New("device is leased")
	// ErrNoDevice: nothing matching became free within the wait.
	ErrNoDevice = errors.New("no matching device available")
	// ErrUnsatisfiable: no registered device fits the selector, in any
	// state, so waiting could never succeed.
	ErrUnsatisfiable = errors.New("no registered device matches the selector")
	// ErrShuttingDown: the instance is draining; a waiting acquire gave up
	// so that its client can retry at another instance.
	ErrShuttingDown = errors.New("instance is shutting down")
	// ErrLeaseEnded: the lease is over; errors.As a *LeaseEndedError for why.
	ErrLeaseEnded = errors.New("lease has ended")
	// ErrIdempotencyKeyReused: the owner already used the acquire's
	// idempotency key for a different request (pool, labels, TTL or holder
	// differ), which got or is getting its own lease. Nothing was changed.
	ErrIdempotencyKeyReused = errors.New("idempotency key already used for a different request")
	// ErrKeyExists: a key that is not revoked has that name already.
	ErrKeyExists = errors.New("an active key with that name exists")
	// ErrUnknownKey: no key that is not revoked has that secret.
	ErrUnknownKey = errors.New("unknown or revoked API key")
)

// LeaseEndedError carries the ended lease, so callers can say why it ended
// (released, expired, revoked, device_removed).
type LeaseEndedError struct {
	Lease Lease
}

func (e *LeaseEndedError) Error() string {
	return fmt.Sprintf("lease %s has ended (%s)", e.Lease.ID, e.Lease.EndReason)
}

// Is makes errors.Is(err, ErrLeaseEnded) true.
func (e *LeaseEndedError) Is(target error) bool { return target == ErrLeaseEnded }
