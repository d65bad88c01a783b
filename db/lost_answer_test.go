package db

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// errAnswerLost stands for the connection dropping after the server
// committed a statement and before its answer arrived (pgx reports such a
// cut as an unexpected EOF).
var errAnswerLost = fmt.Errorf("conn closed after the statement was sent: %w", io.ErrUnexpectedEOF)

// lossyDB runs every statement on the pool, but loses answers on cue:
// the next EnqueueWaiter commits and then fails as if the connection had
// been cut (after running afterJoin, if set), and while the database is
// "still out of reach" the next CancelWaiter fails without running. A
// stand-in for a network cut at the worst moment, with no mock of the
// database: every statement that runs, runs on PostgreSQL.
type lossyDB struct {
	dbsqlc.DBTX
	mu             sync.Mutex
	loseNextJoin   bool
	failNextCancel bool
	afterJoin      func()
}

func (l *lossyDB) take(flag *bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	was := *flag
	*flag = false
	return was
}

func (l *lossyDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	row := l.DBTX.QueryRow(ctx, sql, args...)
	if strings.Contains(sql, "name: EnqueueWaiter ") && l.take(&l.loseNextJoin) {
		return lostRow{row: row, after: l.afterJoin}
	}
	return row
}

func (l *lossyDB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if strings.Contains(sql, "name: CancelWaiter ") && l.take(&l.failNextCancel) {
		return pgconn.CommandTag{}, errAnswerLost
	}
	return l.DBTX.Exec(ctx, sql, args...)
}

// lostRow reads the real answer (the statement committed), then loses it.
type lostRow struct {
	row   pgx.Row
	after func()
}

func (r lostRow) Scan(dest ...any) error {
	if err := r.row.Scan(dest...); err != nil {
		return err
	}
	if r.after != nil {
		r.after()
	}
	return errAnswerLost
}

// newLossyAllocator is newAllocator whose queries go through a lossyDB.
func newLossyAllocator(t *testing.T, url string) (*Allocator, *lossyDB) {
	t.Helper()
	var lossy *lossyDB
	a := newAllocatorThrough(t, url, func(pool *pgxpool.Pool) dbsqlc.DBTX {
		lossy = &lossyDB{DBTX: pool}
		return lossy
	})
	return a, lossy
}

// A join whose statement committed but whose answer was lost, and whose
// clean-up failed too (the database still out of reach): its retry meets
// its own row. That row is the waiter's place in line, not a conflict: the
// client must get the device when it is freed, not a 500 for waiters_pkey.
func TestAJoinWhoseAnswerWasLostFindsItsOwnRow(t *testing.T) {
	a, lossy := newLossyAllocator(t, newDB(t))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	lossy.loseNextJoin, lossy.failNextCancel = true, true

	got := goAcquire(t.Context(), a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", Wait: 20 * time.Second, TTL: time.Minute})
	var r result
	answered := false
	waitFor(t, "the retried join to succeed (or the acquire to fail)", func() bool {
		select {
		case r = <-got:
			answered = true
			return true
		default:
			return len(a.hub.QueuedIDs()) == 1
		}
	})
	if answered {
		t.Fatalf("the acquire was answered before any device was free: %+v, %v", r.lease, r.err)
	}
	if n := queueLength(t, a, "lab"); n != 1 {
		t.Fatalf("%d rows in line, want the waiter's one", n)
	}
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	r = <-got
	if r.err != nil || r.lease.Device.Name != "d1" {
		t.Fatalf("the waiter: %+v, %v; want d1", r.lease, r.err)
	}
	if n := queueLength(t, a, "lab"); n != 0 {
		t.Fatalf("%d rows left in line after the waiter was served", n)
	}
	checkOneHolder(t, a)
}

// A join whose statement committed and whose row was served at once (a
// release handed it a device) before the lost answer could be retried: the
// retry must not put the waiter in line a second time. It would be served
// again, and that second lease, handed to a request already answered, would
// keep its device from everyone until its TTL.
func TestAServedWaiterWhoseJoinAnswerWasLostIsNotServedTwice(t *testing.T) {
	a, lossy := newLossyAllocator(t, newDB(t))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	mustCreate(t, a, "d2", "lab", "h:2", nil)
	h1 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	h2 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	lossy.loseNextJoin = true
	lossy.afterJoin = func() {
		// The join committed; d1 is freed and handed to it before its
		// answer (lost) could have arrived.
		if _, err := a.Release(context.WithoutCancel(t.Context()), h1.ID); err != nil {
			t.Errorf("release of d1: %v", err)
		}
	}

	r := <-goAcquire(t.Context(), a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", Wait: 20 * time.Second, TTL: time.Hour})
	if r.err != nil || r.lease.Device.Name != "d1" {
		t.Fatalf("the waiter: %+v, %v; want d1", r.lease, r.err)
	}
	if n := queueLength(t, a, "lab"); n != 0 {
		t.Fatalf("%d rows in line after the waiter was answered: its retried join put it back in line", n)
	}
	if _, err := a.Release(t.Context(), h2.ID); err != nil {
		t.Fatal(err)
	}
	if d := mustDevice(t, a, "d2"); d.State != StateIdle {
		t.Fatalf("d2 after its release is %s (lease %v), want idle: nobody else waits", d.State, d.LeaseID)
	}
	checkOneHolder(t, a)
}

// A join whose statement committed, whose row was served at once, whose
// answer was lost, and whose client left meanwhile: the request gives up
// (no retry), so nobody will collect the lease handed to it. Unkeyed, it
// must be given back by the next re-check, not held until its TTL.
func TestAServedJoinWhoseAnswerWasLostIsGivenBackWhenTheClientLeft(t *testing.T) {
	a, lossy := newLossyAllocator(t, newDB(t))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	h1 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	ctx, leave := context.WithCancel(t.Context())
	defer leave()
	lossy.loseNextJoin = true
	lossy.afterJoin = func() {
		if _, err := a.Release(context.WithoutCancel(t.Context()), h1.ID); err != nil {
			t.Errorf("release of d1: %v", err)
		}
		leave()
	}

	r := <-goAcquire(ctx, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", Wait: 20 * time.Second, TTL: time.Hour})
	if r.err == nil {
		t.Fatalf("the acquire whose client left was answered with %+v", r.lease)
	}
	a.rechecker.pass(t.Context())
	if d := mustDevice(t, a, "d1"); d.State != StateIdle {
		t.Fatalf("d1 after the re-check is %s (lease %v), want idle: the request it was handed to had given up", d.State, d.LeaseID)
	}
	checkOneHolder(t, a)
}
