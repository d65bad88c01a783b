package db

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// cancelCutDB runs every statement on PostgreSQL, but on cue runs a step
// and then fails the next CancelWaiter without running it.
type cancelCutDB struct {
	dbsqlc.DBTX
	mu     sync.Mutex
	before func()
}

func (c *cancelCutDB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if strings.Contains(sql, "name: CancelWaiter ") {
		c.mu.Lock()
		f := c.before
		c.before = nil
		c.mu.Unlock()
		if f != nil {
			f()
			return pgconn.CommandTag{}, errAnswerLost
		}
	}
	return c.DBTX.Exec(ctx, sql, args...)
}

// The stranded marks live in this instance's memory only: a lease handed
// to a stranded (already answered) waiter is given back by the next
// re-check pass, and a clean stop runs one last pass, or nobody would ever
// give it back and the device would be held by nobody until the lease's
// TTL (found by review; failed before the fix).
func TestALeaseHandedToAStrandedWaiterIsGivenBackWhenItsInstanceStops(t *testing.T) {
	url := newDB(t)
	var cut *cancelCutDB
	a := newAllocatorThrough(t, url, func(pool *pgxpool.Pool) dbsqlc.DBTX {
		cut = &cancelCutDB{DBTX: pool}
		return cut
	})
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	h1 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder", TTL: time.Hour})

	cut.before = func() {
		// The wait is over; before the row can go, a release hands it
		// d1, and the statement taking the row out is cut.
		if _, err := a.Release(context.WithoutCancel(t.Context()), h1.ID); err != nil {
			t.Errorf("release of d1: %v", err)
		}
	}
	r := <-goAcquire(t.Context(), a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", Wait: 500 * time.Millisecond, TTL: time.Hour})
	if r.err == nil {
		t.Fatalf("the acquire whose row could not leave was answered with %+v", r.lease)
	}
	t.Logf("the request was answered %q; marks: %v", r.err, a.stranded.snapshot())
	a.Stop()

	b := newAllocator(t, url, testConfig(&fakeProber{}))
	b.rechecker.pass(t.Context())
	if d := mustDevice(t, b, "d1"); d.State != StateIdle {
		t.Fatalf("d1 after its instance stopped (and another's re-check) is %s (lease %v), want idle: the request it was handed to was answered %q; held by nobody until its TTL (1h)",
			d.State, d.LeaseID, r.err)
	}
}
