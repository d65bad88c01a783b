package db

import (
	"context"
	"errors"
	"time"
)

// AcquireRequest asks for one device.
type AcquireRequest struct {
	Selector Selector
	// Wait is how long to long-poll when nothing matching is idle; 0 answers
	// at once.
	Wait time.Duration
	// TTL is the lease's lifetime; 0 means the configured default.
	TTL time.Duration
	// Owner is the API key the lease belongs to; Holder is the client's own
	// free-text description of who holds it.
	Owner  string
	Holder string
	// IdempotencyKey, when set, makes the acquire safe to retry: the owner's
	// requests with the same key get one lease between them (see
	// AcquireOrReplay).
	IdempotencyKey string
	// Count is how many devices to lease, all or none (a group); 0 means 1.
	Count int
	// Priority orders the line: higher is served first, and waiting makes
	// up for it over time (Config.PriorityAging). The API bounds it per role.
	Priority int

	// fingerprint identifies the request for its idempotency key; set by
	// AcquireOrReplay.
	fingerprint []byte
}

// Acquire leases a device matching req.Selector, waiting up to req.Wait for
// one to become idle. It fails with ErrUnsatisfiable at once when no
// registered device could ever match, and with ErrNoDevice when the wait
// ends empty. If ctx ends first, no lease is left behind (unless the request
// has an idempotency key: see AcquireOrReplay).
func (a *Allocator) Acquire(ctx context.Context, req AcquireRequest) (Lease, error) {
	lease, _, err := a.AcquireOrReplay(ctx, req)
	return lease, err
}

// AcquireOrReplay is Acquire, reporting also whether the lease is one an
// earlier request with the same idempotency key got (replayed) rather than
// one granted for this call.
//
// With req.IdempotencyKey set, the owner's requests with that key get one
// lease between them:
//   - a retry after the first request finished gets its lease as it is now,
//     active or ended;
//   - a retry while the first still runs at this instance joins it: both get
//     its outcome, and it keeps running while either caller is still there
//     (the first one's client going away is exactly why clients retry);
//   - a retry at another instance races the first for the key in the
//     database (a unique index): the loser rolls back, its device stays
//     idle, and it answers with the winner's lease;
//   - the same key with a different request (selector, TTL or holder; the
//     wait may differ) fails with ErrIdempotencyKeyReused, changing nothing.
//
// A lease with a key is not ended when its requester goes away before
// receiving it, as an unkeyed one is: the retry needs it.
func (a *Allocator) AcquireOrReplay(ctx context.Context, req AcquireRequest) (Lease, bool, error) {
	start := time.Now()
	lease, replayed, err := a.acquireOrReplay(ctx, req)
	a.cfg.Observer.AcquireDone(AcquireOutcome(replayed, err), time.Since(start))
	if err == nil {
		a.log.Debug("lease granted", "lease", lease.ID, "device", lease.Device.Name, "pool", lease.Device.Pool,
			"owner", lease.Owner, "holder", lease.Holder, "replayed", replayed, "took", time.Since(start))
	}
	return lease, replayed, err
}

func (a *Allocator) acquireOrReplay(ctx context.Context, req AcquireRequest) (Lease, bool, error) {
	req.Wait = min(max(req.Wait, 0), a.cfg.MaxWait)
	if req.IdempotencyKey == "" {
		return a.acquire(ctx, req, fixedWindow(time.Now().Add(req.Wait)))
	}
	// Before TTL defaults are applied: a retry is the same request when it
	// asks for the same thing, whatever the server's default is today.
	req.fingerprint = req.fingerprintOf()
	return a.acquireJoined(ctx, req)
}

// acquire is one request's acquire, in four steps:
//  1. at once (atOnce, attempt.go): a device when one is idle and nobody
//     waits in the pool's line;
//  2. satisfiable (satisfiable.go): fail with ErrUnsatisfiable when no
//     registered device could ever fit;
//  3. replay (replay.go): with an idempotency key, the lease a retry of this
//     request got meanwhile is the answer (replayed true);
//  4. the line (waitInLine, queue.go): wait there until a device is handed
//     over (collect, handoff.go) or the window closes.
//
// A transient database failure in steps 1 to 3 is waited out while the
// request may still wait (stepRetry); the line retries its own statements
// (retryQueueStep).
func (a *Allocator) acquire(ctx context.Context, req AcquireRequest, window waitWindow) (Lease, bool, error) {
	if req.TTL <= 0 {
		req.TTL = a.cfg.DefaultTTL
	}
	req.Count = max(req.Count, 1)
	retry := a.newStepRetry(req.Selector.Pool, window)

	lease, replayed, err := a.atOnce(ctx, req, window, retry)
	var none noneIdle
	if !errors.As(err, &none) {
		return lease, replayed, err
	}

	for {
		err := a.checkSatisfiable(ctx, req.Selector, req.Count, a.attemptBound(window.remaining()))
		if err == nil {
			break
		}
		if !retry.again(ctx, err) {
			return Lease{}, false, err
		}
	}

	if req.IdempotencyKey != "" {
		// The key's lease may have been granted since this acquire
		// looked (by a flight that ended just before this one began, or
		// at another instance): then that is the answer, not a wait.
		for {
			lease, ok, err := a.replayWithin(ctx, req, a.attemptBound(window.remaining()))
			if err != nil && retry.again(ctx, err) {
				continue
			}
			if err != nil || ok {
				return lease, ok, err
			}
			break
		}
	}

	if !none.queued && window.remaining() <= 0 {
		return Lease{}, false, ErrNoDevice
	}
	return a.waitInLine(ctx, req, window)
}

// attemptBoundSlack is how far past the end of its wait a statement of an
// acquire may run: a request blocked in the database (a DBA's table lock, a
// slow disk) is answered within about wait + this, not after the server's
// own, longer timeouts.
const attemptBoundSlack = 500 * time.Millisecond

// minStepBound is the least bound a step of an acquire gets, even when it
// starts after the acquire should have been answered: enough for a
// statement the database does not block.
const minStepBound = 100 * time.Millisecond

// attemptBound is the statement bound of a step of an acquire with
// remaining wait left (negative once the wait is over): the rest of the
// wait plus attemptBoundSlack, so that steps run one after another past
// the end of the wait (a dispatch, then leaving the line) still answer
// within about wait + slack; at least minStepBound, never more than the
// configured database timeouts.
func (a *Allocator) attemptBound(remaining time.Duration) time.Duration {
	return min(max(remaining+attemptBoundSlack, minStepBound), a.cfg.StatementTimeout, a.cfg.LockTimeout)
}

// waitWindow is how long an acquire may keep waiting. A flight's window
// grows when a retry that may wait longer joins it.
type waitWindow interface {
	// remaining is the time left; <= 0 means waiting is over.
	remaining() time.Duration
	// grew delivers a token when the window was extended; nil if it never is.
	grew() <-chan struct{}
}

// fixedWindow ends at a fixed time.
type fixedWindow time.Time

func (w fixedWindow) remaining() time.Duration { return time.Until(time.Time(w)) }

func (fixedWindow) grew() <-chan struct{} { return nil }
