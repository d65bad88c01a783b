package db

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
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
	// marks holds the stranded waiters. A pass reads them without taking
	// them out: a mark goes only by forget (its waiter's retried join
	// succeeded, or it was answered with its leases) or by settle (a pass
	// cleared it). Taken out and put back, a mark forgotten meanwhile
	// would come back stale, and the pass after the waiter's answer would
	// end the lease its client had been told it has.
	marks map[uuid.UUID]strandedMark
	// made numbers the marks, so a pass settles only the one it read.
	made uint64
	// passRead, when set (tests only), runs in each re-check pass right
	// after it read the marks: a test signal to interleave a waiter's
	// own steps with the pass deterministically.
	passRead func(ctx context.Context)
}

// strandedMark is one waiter's mark.
type strandedMark struct {
	// keyed tells whether the waiter's request had an idempotency key:
	// such a lease is kept for the retry that replays it.
	keyed bool
	// n is the mark's number (strandedWaiters.made when it was added).
	n uint64
	// at is when it was added: a join whose answer was lost may still
	// commit until the server's statement_timeout ends it (a statement
	// waiting on a lock does not notice its client is gone), so a pass
	// that finds neither row nor lease keeps the mark until then.
	at time.Time
}

// add records a waiter whose row may still be in line.
func (s *strandedWaiters) add(id uuid.UUID, keyed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.marks == nil {
		s.marks = map[uuid.UUID]strandedMark{}
	}
	s.made++
	s.marks[id] = strandedMark{keyed: keyed, n: s.made, at: time.Now()}
}

// forget drops a waiter: its row was written again since (a retried join
// succeeded), so it is in line for real and must not be removed.
func (s *strandedWaiters) forget(id uuid.UUID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.marks, id)
}

// answeredWith drops a waiter whose request is answered with the leases
// handed to it: they are its client's now, whatever marked it. A pass
// that read its mark before finds it gone (claim).
func (s *strandedWaiters) answeredWith(id uuid.UUID) {
	s.forget(id)
}

// beginPass returns a copy of the marks for a re-check pass.
func (s *strandedWaiters) beginPass() map[uuid.UUID]strandedMark {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[uuid.UUID]strandedMark, len(s.marks))
	for id, m := range s.marks {
		out[id] = m
	}
	return out
}

// claim reports whether a pass may act on the mark it read: it is still
// there, neither forgotten (a join succeeded, or the waiter was answered
// with its leases) nor made again. Ask only once the waiter has left the
// hub: its request is answered then, for good (answeredWith runs before
// it leaves), so what claim saw cannot change after.
func (s *strandedWaiters) claim(id uuid.UUID, m strandedMark) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.marks[id] == m
}

// settle drops the mark a pass cleared, unless it was made again since.
func (s *strandedWaiters) settle(id uuid.UUID, m strandedMark) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.marks[id] == m {
		delete(s.marks, id)
	}
}

// snapshot lists the marks and whether each is keyed (tests look).
func (s *strandedWaiters) snapshot() map[uuid.UUID]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[uuid.UUID]bool, len(s.marks))
	for id, m := range s.marks {
		out[id] = m.keyed
	}
	return out
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

// strand hands a waiter whose row could not be taken out of line to the
// re-checker.
func (a *Allocator) strand(id uuid.UUID, req AcquireRequest, err error) {
	a.log.Warn("a finished request's row could not leave the line; the re-check removes it", "waiter", id, "pool", req.Selector.Pool, "err", err)
	a.stranded.add(id, req.IdempotencyKey != "")
}

// clearStranded removes the stranded rows and ends the leases handed to
// them meanwhile (unless keyed). A mark whose row or leases could not be
// dealt with stays for the next pass.
func (a *Allocator) clearStranded(ctx context.Context) {
	marks := a.stranded.beginPass()
	a.stranded.afterRead(ctx)
	for id, m := range marks {
		// Still waiting here (retrying a failed join): its own request
		// takes care of its row, and may yet be answered with a lease.
		// Looked at again next pass, if still marked. Asked before claim:
		// gone from the hub, the waiter's answer is final.
		if a.hub.Has(id) || !a.stranded.claim(id, m) {
			continue
		}
		if err := a.clearStrandedOne(ctx, id, m); err != nil {
			if ctx.Err() == nil && !errors.Is(err, errMayStillJoin) {
				a.log.Warn("a stranded row in line could not be removed yet, or its leases not given back", "waiter", id, "err", err)
			}
			continue
		}
		a.stranded.settle(id, m)
	}
}

// errMayStillJoin: a pass found neither the stranded row nor a lease
// handed to it, but a join of it may still commit (see strandedMark.at).
var errMayStillJoin = errors.New("a lost join of this waiter may still commit")

// lateJoinBound is how long after a mark a join whose answer was lost may
// still commit: the server's statement_timeout, plus a second for its
// commit and clocks.
func (a *Allocator) lateJoinBound() time.Duration {
	return a.cfg.StatementTimeout + time.Second
}

func (a *Allocator) clearStrandedOne(ctx context.Context, id uuid.UUID, m strandedMark) error {
	keyed := m.keyed
	stmtCtx, cancel := context.WithTimeout(ctx, queueBound)
	defer cancel()
	n, err := a.q.CancelWaiter(stmtCtx, id)
	if err != nil {
		return fmt.Errorf("remove the row: %w", err)
	}
	if n == 1 {
		return nil
	}
	// Served before it could go (or it never was in line): whatever it was
	// handed has nobody to go to. A keyed request's confirmed leases stay
	// for its retry; pending ones (their probe never settled: nobody will
	// confirm them now) go back, or the retry would wait for them in vain.
	rows, err := a.q.WaiterLeases(stmtCtx, &id)
	if err != nil {
		return fmt.Errorf("read the leases handed to it: %w", err)
	}
	if len(rows) == 0 && time.Since(m.at) < a.lateJoinBound() {
		// Nothing yet; the next passes look again until no lost join
		// can commit any more.
		return errMayStillJoin
	}
	// The key's lease first, as in takeBackUnsettled: ending another lease
	// of a pending group first locks the key's lease too (migrations/00018's
	// group trigger), in an order that can deadlock with a confirm.
	slices.SortStableFunc(rows, func(x, y dbsqlc.WaiterLeasesRow) int {
		return cmp.Compare(keyRank(x), keyRank(y))
	})
	var failed error
	for _, r := range rows {
		if keyed && !r.DevallocLease.HandoffPending {
			continue
		}
		if err := a.giveBackStranded(ctx, r.DevallocLease.ID, keyed); err != nil {
			failed = errors.Join(failed, err)
		}
	}
	// The leases that did end are no longer read (WaiterLeases lists active
	// ones); the next pass gives back the rest.
	return failed
}

// keyRank sorts the lease carrying an idempotency key before the others.
func keyRank(r dbsqlc.WaiterLeasesRow) int {
	if r.DevallocLease.IdempotencyKey != nil {
		return 0
	}
	return 1
}

// giveBackStranded ends a lease handed to a stranded row and hands its
// device on. One that ended already (reaped at expiry meanwhile) is
// nothing to give back. pendingOnly (a keyed request's): only while its
// handoff is still under probe, checked on the locked row, since a confirm
// committing after the pass read it made it the retry's answer.
func (a *Allocator) giveBackStranded(ctx context.Context, lease uuid.UUID, pendingOnly bool) error {
	stmtCtx, cancel := context.WithTimeout(ctx, queueBound)
	defer cancel()
	r, err := endLease(stmtCtx, a.q, dbsqlc.EndLeaseParams{ID: lease, EndReason: EndReleased, PendingOnly: pendingOnly})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("give back lease %s: %w", lease, err)
	}
	a.endedLease(r)
	return nil
}
