package db

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Observer is told what the allocator does, for metrics. Its methods are
// called on hot paths and from many goroutines: they must be cheap and
// safe for concurrent use. Config.Observer nil means nobody listens.
type Observer interface {
	// AcquireDone: one acquire call ended with outcome (see
	// AcquireOutcome) after took.
	AcquireDone(outcome string, took time.Duration)
	// AcquireWaited: an acquire that found nothing idle at first spent
	// waited blocked, waiting for a wake-up (retries of an idempotent
	// request that join it are one acquire).
	AcquireWaited(waited time.Duration)
	// ProbeDone: one probe of a device of kind took took; err nil when
	// the device answered.
	ProbeDone(kind string, took time.Duration, err error)
	// LeasesReaped: n expired leases were ended by this instance.
	LeasesReaped(n int)
	// ReapFailed: the reaper could not end one expired lease (the database
	// refused the statement); it skipped it, logged its id, and tries it
	// again later.
	ReapFailed()
	// ListenerConnected: the LISTEN connection was (re)established.
	ListenerConnected()
}

// Acquire outcomes, as AcquireDone reports them.
const (
	OutcomeGranted       = "granted"
	OutcomeReplayed      = "replayed"
	OutcomeNoDevice      = "no_device"
	OutcomeUnsatisfiable = "unsatisfiable"
	OutcomeCancelled     = "cancelled"
	OutcomeShuttingDown  = "shutting_down"
	OutcomeKeyReused     = "idempotency_key_reused"
	OutcomeError         = "error"
)

// AcquireOutcome names how an acquire ended.
func AcquireOutcome(replayed bool, err error) string {
	switch {
	case err == nil && replayed:
		return OutcomeReplayed
	case err == nil:
		return OutcomeGranted
	case errors.Is(err, ErrNoDevice):
		return OutcomeNoDevice
	case errors.Is(err, ErrUnsatisfiable):
		return OutcomeUnsatisfiable
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return OutcomeCancelled
	case errors.Is(err, ErrShuttingDown):
		return OutcomeShuttingDown
	case errors.Is(err, ErrIdempotencyKeyReused):
		return OutcomeKeyReused
	}
	return OutcomeError
}

// nopObserver is the Observer when nobody listens.
type nopObserver struct{}

func (nopObserver) AcquireDone(string, time.Duration)      {}
func (nopObserver) AcquireWaited(time.Duration)            {}
func (nopObserver) ProbeDone(string, time.Duration, error) {}
func (nopObserver) LeasesReaped(int)                       {}
func (nopObserver) ReapFailed()                            {}
func (nopObserver) ListenerConnected()                     {}

// PoolStat is the connection pool's state (for metrics).
func (a *Allocator) PoolStat() *pgxpool.Stat { return a.pool.Stat() }
