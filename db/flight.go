package db

import (
	"bytes"
	"context"
	"sync"
	"time"
)

// flightGroup runs at most one acquire per (owner, idempotency key) in this
// instance. A client whose first request is still waiting retries with the
// same key (its connection dropped, its HTTP client timed out); the retry
// joins the running acquire instead of waiting beside it, so the two never
// hold two places in the queue or take two devices. The database's unique
// index does the same across instances, more coarsely.
//
// The zero value is ready to use.
type flightGroup struct {
	mu      sync.Mutex
	flights map[flightKey]*flight
	// running counts flight goroutines, for tests that must see them end.
	running sync.WaitGroup
}

type flightKey struct{ owner, key string }

// flight is one acquire shared by the callers that joined it. It runs on
// its own context, cancelled only when every caller has gone: the caller
// that started it leaving (its client gave up, which is when clients retry)
// must not end it for the retry that joined.
type flight struct {
	group       *flightGroup
	fingerprint []byte
	ctx         context.Context
	cancel      context.CancelFunc
	// done is closed when the acquire has returned; the results below are
	// set before.
	done     chan struct{}
	lease    Lease
	replayed bool
	err      error

	// Guarded by group.mu.
	callers int
	// deadline is the latest end of wait of any caller that joined: the
	// flight waits for whoever may wait longest.
	deadline time.Time
	// closing: no caller is left and the flight was cancelled; a newcomer
	// must not join it, but wait for it to finish and start afresh.
	closing bool
	// extended gets a token when deadline moved later.
	extended chan struct{}
}

// acquireJoined runs req (which has an idempotency key) as, or within, the
// key's flight.
func (a *Allocator) acquireJoined(ctx context.Context, req AcquireRequest) (Lease, bool, error) {
	k := flightKey{owner: req.Owner, key: req.IdempotencyKey}
	for {
		if lease, ok, err := a.replayWithin(ctx, req, a.attemptBound(req.Wait)); err != nil || ok {
			return lease, ok, err
		}
		f, how, err := a.flights.join(ctx, k, req.fingerprint, time.Now().Add(req.Wait))
		if err != nil {
			return Lease{}, false, err
		}
		if how == joinedClosing {
			// Its callers all left; once it has finished (rolled back, or
			// recorded a lease our replay will find) look again.
			select {
			case <-f.done:
				continue
			case <-ctx.Done():
				return Lease{}, false, ctx.Err()
			}
		}
		started := how == startedFlight
		if started {
			a.flights.running.Add(1)
			go func() {
				defer a.flights.running.Done()
				lease, replayed, err := a.acquire(f.ctx, req, f)
				a.flights.finish(k, f, lease, replayed, err)
			}()
		}
		select {
		case <-f.done:
			// For a joiner, the lease came from the request it retried.
			return f.lease, f.replayed || (!started && f.err == nil), f.err
		case <-ctx.Done():
			a.flights.leave(f)
			return Lease{}, false, ctx.Err()
		}
	}
}

// joinResult says how join attached a caller.
type joinResult int

const (
	joinedFlight  joinResult = iota // to a running flight
	startedFlight                   // to a new flight, which the caller must run
	joinedClosing                   // not at all: the flight is closing; wait for its done
)

// join adds a caller to the flight for k, starting one if none is running.
// A running flight for a different request fails with
// ErrIdempotencyKeyReused. deadline is when the caller's wait ends.
func (g *flightGroup) join(ctx context.Context, k flightKey, fingerprint []byte, deadline time.Time) (*flight, joinResult, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f := g.flights[k]; f != nil {
		switch {
		case f.closing:
			return f, joinedClosing, nil
		case !bytes.Equal(f.fingerprint, fingerprint):
			return nil, 0, ErrIdempotencyKeyReused
		}
		f.callers++
		if deadline.After(f.deadline) {
			f.deadline = deadline
			select {
			case f.extended <- struct{}{}:
			default:
			}
		}
		return f, joinedFlight, nil
	}
	f := &flight{
		group:       g,
		fingerprint: fingerprint,
		done:        make(chan struct{}),
		callers:     1,
		deadline:    deadline,
		extended:    make(chan struct{}, 1),
	}
	// Keeps ctx's values (logging, tracing), not its cancellation.
	f.ctx, f.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if g.flights == nil {
		g.flights = map[flightKey]*flight{}
	}
	g.flights[k] = f
	return f, startedFlight, nil
}

// leave removes a caller whose context ended; the last one out cancels the
// flight (an acquire in progress rolls back).
func (g *flightGroup) leave(f *flight) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f.callers--
	if f.callers == 0 {
		f.closing = true
		f.cancel()
	}
}

// finish records the flight's outcome for its callers and retires it.
func (g *flightGroup) finish(k flightKey, f *flight, lease Lease, replayed bool, err error) {
	g.mu.Lock()
	if g.flights[k] == f {
		delete(g.flights, k)
	}
	f.lease, f.replayed, f.err = lease, replayed, err
	close(f.done)
	g.mu.Unlock()
	f.cancel() // release the context's resources
}

// remaining makes a flight the wait window of its own acquire.
func (f *flight) remaining() time.Duration {
	f.group.mu.Lock()
	defer f.group.mu.Unlock()
	return time.Until(f.deadline)
}

func (f *flight) grew() <-chan struct{} { return f.extended }

// inFlight reports how many flights run (for tests).
func (g *flightGroup) inFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.flights)
}

// callersOf reports how many callers the flight for k has, 0 if none runs
// (for tests).
func (g *flightGroup) callersOf(owner, key string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f := g.flights[flightKey{owner, key}]; f != nil {
		return f.callers
	}
	return 0
}

// remainingOf reports how long the flight for k may still wait, 0 if none
// runs (for tests).
func (g *flightGroup) remainingOf(owner, key string) time.Duration {
	g.mu.Lock()
	f := g.flights[flightKey{owner, key}]
	g.mu.Unlock()
	if f == nil {
		return 0
	}
	return f.remaining()
}
