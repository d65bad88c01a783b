package db

import (
	"context"
	"sync"

	"github.com/google/uuid"
)

// strandedWaiters are rows in line whose request has already been answered:
// taking the row out failed (the database blocked or dropped the statement)
// and the answer could not wait for it. A stranded row can still be handed
// a device, which nobody would collect; the re-checker keeps removing the
// rows and gives such devices back (clearStranded). A served waiter whose
// leases could not be read is one too (giveBackUnread): its row is gone,
// its devices are given back the same way.
type strandedWaiters struct {
	mu sync.Mutex
	// keyed tells, per waiter, whether its request had an idempotency key:
	// such a lease is kept for the retry that replays it.
	keyed map[uuid.UUID]bool
	// passRead, when set (tests only), runs in each re-check pass right
	// after it read the marks: a test signal to interleave a waiter's
	// own steps with the pass deterministically.
	passRead func(ctx context.Context)
}

// setPassRead installs the test signal run after a pass read the marks.
func (s *strandedWaiters) setPassRead(f func(ctx context.Context)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.passRead = f
}

// afterRead runs the test signal, if any.
func (s *strandedWaiters) afterRead(ctx context.Context) {
	s.mu.Lock()
	f := s.passRead
	s.mu.Unlock()
	if f != nil {
		f(ctx)
	}
}

// add records a waiter whose row may still be in line.
func (s *strandedWaiters) add(id uuid.UUID, keyed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keyed == nil {
		s.keyed = map[uuid.UUID]bool{}
	}
	s.keyed[id] = keyed
}

// forget drops a waiter: its row was written again since (a retried join
// succeeded), so it is in line for real and must not be removed.
func (s *strandedWaiters) forget(id uuid.UUID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.keyed, id)
}

// take empties the set and returns what it held.
func (s *strandedWaiters) take() map[uuid.UUID]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.keyed
	s.keyed = nil
	return out
}

// strand hands a waiter whose row could not be taken out of line to the
// re-checker.
func (a *Allocator) strand(id uuid.UUID, req AcquireRequest, err error) {
	a.log.Warn("a finished request's row could not leave the line; the re-check removes it", "waiter", id, "pool", req.Selector.Pool, "err", err)
	a.stranded.add(id, req.IdempotencyKey != "")
}

// clearStranded removes the stranded rows and ends the leases handed to
// them meanwhile (unless keyed). A row that still cannot be removed stays
// stranded for the next pass.
func (a *Allocator) clearStranded(ctx context.Context) {
	marks := a.stranded.take()
	a.stranded.afterRead(ctx)
	for id, keyed := range marks {
		if a.hub.has(id) {
			// Still waiting here (retrying a failed join): its own
			// request takes care of its row. Looked at again next pass.
			a.stranded.add(id, keyed)
			continue
		}
		if err := a.clearStrandedOne(ctx, id, keyed); err != nil {
			if ctx.Err() == nil {
				a.log.Warn("a stranded row in line could not be removed yet", "waiter", id, "err", err)
			}
			a.stranded.add(id, keyed)
		}
	}
}

func (a *Allocator) clearStrandedOne(ctx context.Context, id uuid.UUID, keyed bool) error {
	stmtCtx, cancel := context.WithTimeout(ctx, queueBound)
	defer cancel()
	n, err := a.q.CancelWaiter(stmtCtx, id)
	if err != nil {
		return err
	}
	if n == 1 || keyed {
		return nil
	}
	// Served before it could go (or it never was in line): whatever it was
	// handed has nobody to go to.
	rows, err := a.q.WaiterLeases(stmtCtx, &id)
	if err != nil {
		return err
	}
	for _, r := range rows {
		a.abandon(leaseFromRow(r.DevallocLease, nil))
	}
	return nil
}
