package db

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// cutEndDB runs every statement on PostgreSQL, but on cue runs a step
// just before the next CancelWaiter, and then fails the next EndLease
// without running it (the database out of reach for that one statement).
type cutEndDB struct {
	dbsqlc.DBTX
	mu           sync.Mutex
	beforeCancel func()
	failNextEnd  bool
}

func (c *cutEndDB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if strings.Contains(sql, "name: CancelWaiter ") {
		c.mu.Lock()
		f := c.beforeCancel
		c.beforeCancel = nil
		c.mu.Unlock()
		if f != nil {
			f()
		}
	}
	return c.DBTX.Exec(ctx, sql, args...)
}

func (c *cutEndDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if strings.Contains(sql, "name: EndLease ") {
		c.mu.Lock()
		fail := c.failNextEnd
		c.failNextEnd = false
		c.mu.Unlock()
		if fail {
			return failedRow{}
		}
	}
	return c.DBTX.QueryRow(ctx, sql, args...)
}

// failedRow is the answer of a statement the database never ran.
type failedRow struct{}

func (failedRow) Scan(...any) error { return errAnswerLost }

// A waiter served just as its client left gives the lease back (abandon);
// when that EndLease fails (a cut, a lock timeout) the re-check retries it,
// as it does for a stranded waiter's leases: otherwise the lease is held by
// nobody until its TTL (found by review; failed before the fix).
func TestALeaseAbandonedByALeavingClientIsGivenBackEvenIfTheFirstTryFails(t *testing.T) {
	url := newDB(t)
	var cut *cutEndDB
	a := newAllocatorThrough(t, url, func(pool *pgxpool.Pool) dbsqlc.DBTX {
		cut = &cutEndDB{DBTX: pool}
		return cut
	})

	mustCreate(t, a, "d1", "lab", "h:1", nil)
	h1 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder", TTL: time.Hour})

	ctx, leave := context.WithCancel(t.Context())
	defer leave()
	cut.beforeCancel = func() {
		// The client has left; before its row can go, a release hands
		// it d1. Then the give-back's one try is cut.
		if _, err := a.Release(context.WithoutCancel(t.Context()), h1.ID); err != nil {
			t.Errorf("release of d1: %v", err)
		}
		cut.mu.Lock()
		cut.failNextEnd = true
		cut.mu.Unlock()
	}
	got := goAcquire(ctx, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", Wait: 20 * time.Second, TTL: time.Hour})
	awaitJoin(t, a, "w")
	leave()
	r := <-got
	if r.err == nil {
		t.Fatalf("the acquire whose client left was answered with %+v", r.lease)
	}
	cut.mu.Lock()
	tried := !cut.failNextEnd
	cut.mu.Unlock()
	if !tried {
		t.Fatal("the lease handed to the leaving client was never given back at all (no EndLease ran)")
	}
	for range 3 {
		a.rechecker.pass(t.Context())
	}
	if d := mustDevice(t, a, "d1"); d.State != StateIdle {
		t.Fatalf("d1 after 3 re-check passes is %s (lease %v), want idle: the request it was handed to had left (answered %q); held by nobody until its TTL (1h)",
			d.State, d.LeaseID, r.err)
	}
}
