package db

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/wake"
)

// A waiter whose first join failed carries a stranded mark (the row may
// have been written) until its retried join succeeds. These tests put the
// waiter's own steps inside a re-check pass, right after the pass read the
// marks (the passRead test signal), and check that nothing the waiter was
// answered with is taken back.

// ownPass marks the context of the test's own re-check pass: the
// background re-checker (a pass runs when the listener connects) must not
// run the test's steps.
type ownPass struct{}

func ownPassCtx(t *testing.T) context.Context {
	return context.WithValue(t.Context(), ownPass{}, true)
}

// inOwnPass wraps steps to run only in the test's own pass, once.
func inOwnPass(steps func()) func(ctx context.Context) {
	var once sync.Once
	return func(ctx context.Context) {
		if ctx.Value(ownPass{}) != nil {
			once.Do(steps)
		}
	}
}

// markedWaiter is a waiting request in pool "lab" whose one device is held,
// left with the mark a failed join leaves (forgetWaiter could not make
// sure its row is gone).
type markedWaiter struct {
	a    *Allocator
	req  AcquireRequest
	w    *wake.Waiter
	held Lease
}

func newMarkedWaiter(t *testing.T) *markedWaiter {
	t.Helper()
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	req := AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", TTL: time.Minute}
	w := a.hub.Join(req.Selector)
	t.Cleanup(w.Leave)
	a.stranded.add(w.ID, false)
	return &markedWaiter{a: a, req: req, w: w, held: held}
}

// join is the waiter's retried join, succeeding.
func (m *markedWaiter) join(t *testing.T) {
	t.Helper()
	if _, _, err := m.a.enqueue(context.Background(), m.req, m.w.ID, nil, 5*time.Second); err != nil {
		t.Errorf("retried join: %v", err)
		return
	}
	m.w.MarkEnqueued()
}

// serveAndAnswer frees the device, which goes to the waiter; the waiter
// collects it (its client is told 201) and leaves.
func (m *markedWaiter) serveAndAnswer(t *testing.T) Lease {
	t.Helper()
	if _, err := m.a.Release(context.Background(), m.held.ID); err != nil {
		t.Errorf("release: %v", err)
		return Lease{}
	}
	waitFor(t, "the waiter served", m.w.IsServed)
	lease, _, giveBack, err := m.a.collect(context.Background(), m.req, m.w)
	if err != nil || giveBack != nil {
		t.Errorf("collect: %+v %v %v", lease, giveBack, err)
	}
	m.w.Leave()
	return lease
}

// stillHeld fails the test unless the device is leased under the lease
// the waiter was answered with.
func (m *markedWaiter) stillHeld(t *testing.T, answered Lease) {
	t.Helper()
	if t.Failed() {
		return
	}
	d := mustDevice(t, m.a, "d1")
	if d.State != StateLeased || d.LeaseID == nil || *d.LeaseID != answered.ID {
		var ended *string
		_ = m.a.pool.QueryRow(t.Context(), `SELECT end_reason FROM devalloc.leases WHERE id = $1`, answered.ID).Scan(&ended)
		reason := "<active>"
		if ended != nil {
			reason = *ended
		}
		t.Fatalf("the lease the waiter was answered with (201) was taken back by the re-check: d1 is %s, lease %s ended %s", d.State, answered.ID, reason)
	}
}

// The reviewer's interleaving: a pass reads the mark, the retried join
// succeeds (and forgets the mark) while the waiter is still here, the pass
// passes the waiter by. Later the waiter is served and answered; the next
// pass must not end that lease.
func TestJoinRetriedDuringARecheckKeepsTheLeaseItIsAnsweredWith(t *testing.T) {
	m := newMarkedWaiter(t)
	m.a.stranded.setPassRead(inOwnPass(func() { m.join(t) }))
	m.a.rechecker.pass(ownPassCtx(t))
	m.a.stranded.setPassRead(nil)

	answered := m.serveAndAnswer(t)
	m.a.rechecker.pass(t.Context())
	m.stillHeld(t, answered)
}

// The whole rest of the waiter's life (join, served, answered, gone) falls
// between the pass reading the mark and acting on it: the pass must not
// act on the mark it read.
func TestWaiterAnsweredDuringARecheckKeepsItsLease(t *testing.T) {
	m := newMarkedWaiter(t)
	var answered Lease
	m.a.stranded.setPassRead(inOwnPass(func() {
		m.join(t)
		answered = m.serveAndAnswer(t)
	}))
	m.a.rechecker.pass(ownPassCtx(t))
	m.a.stranded.setPassRead(nil)
	m.stillHeld(t, answered)
	m.a.rechecker.pass(t.Context())
	m.stillHeld(t, answered)
}

// Defence in depth: whatever marked a waiter, once it is answered with its
// leases no re-check gives them back.
func TestWaiterAnsweredWithALeaseLosesItsStrandedMark(t *testing.T) {
	m := newMarkedWaiter(t)
	m.join(t)
	// A mark made after the join succeeded (no path does this today).
	m.a.stranded.add(m.w.ID, false)
	answered := m.serveAndAnswer(t)
	m.a.rechecker.pass(t.Context())
	m.stillHeld(t, answered)
}

// A stranded row was handed a device; the re-check's give-back of that
// lease fails once (the statement is cancelled while a DBA holds the
// lease's row). The mark stays, and a later pass gives the device back.
func TestFailedGiveBackOfAStrandedLeaseIsRetried(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	req := AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", TTL: time.Minute}
	// A row in line whose request was answered (nobody here waits on it).
	id := uuid.Must(uuid.NewV7())
	if _, _, err := a.enqueue(t.Context(), req, id, nil, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	a.stranded.add(id, false)
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	var handed uuid.UUID
	if err := a.pool.QueryRow(t.Context(), `SELECT id FROM devalloc.leases WHERE waiter_id = $1 AND released_at IS NULL`, id).Scan(&handed); err != nil {
		t.Fatalf("the lease handed to the stranded row: %v", err)
	}

	dba, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer dba.Close(context.Background())
	lock, err := dba.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(context.Background()) //nolint:errcheck // no-op once ended
	if _, err := lock.Exec(t.Context(), `SELECT 1 FROM devalloc.leases WHERE id = $1 FOR UPDATE`, handed); err != nil {
		t.Fatal(err)
	}
	passed := make(chan struct{})
	go func() {
		defer close(passed)
		a.rechecker.pass(t.Context())
	}()
	watcher, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close(context.Background())
	waitFor(t, "the give-back blocked on the DBA's row lock, then cancelled", func() bool {
		var n int
		if err := watcher.QueryRow(t.Context(), `SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%name: EndLease :one%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
	select {
	case <-passed:
	case <-time.After(10 * time.Second):
		t.Fatal("the re-check pass did not end")
	}
	if err := lock.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	if d := mustDevice(t, a, "d1"); d.State != StateLeased {
		t.Fatalf("d1 is %s after the cancelled give-back, want still leased", d.State)
	}

	a.rechecker.pass(t.Context())
	if d := mustDevice(t, a, "d1"); d.State != StateIdle {
		t.Fatalf("d1 is %s after a later re-check, want idle: the failed give-back was not retried", d.State)
	}
}
