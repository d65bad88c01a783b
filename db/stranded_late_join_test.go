package db

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// lateJoinDB loses the answer of the next EnqueueWaiter at once, while the
// statement itself goes on running on a connection of its own: the
// connection was cut while the server waited on a lock, and PostgreSQL,
// not noticing a dead client while it waits on a lock, runs the statement
// to its commit once the lock is released. Every statement runs on
// PostgreSQL; only the answer goes missing.
type lateJoinDB struct {
	dbsqlc.DBTX
	pool *pgxpool.Pool

	mu        sync.Mutex
	delayNext bool
	onLost    func()
	id        uuid.UUID
	done      chan error
}

func (l *lateJoinDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if strings.Contains(sql, "name: EnqueueWaiter ") {
		l.mu.Lock()
		delay := l.delayNext
		l.delayNext = false
		l.mu.Unlock()
		if delay {
			for _, v := range args {
				if id, ok := v.(uuid.UUID); ok {
					l.id = id // the waiter id: the statement's only uuid
				}
			}
			l.done = make(chan error, 1)
			go func() {
				var seq *int64
				var enq, ranked any
				var served, fitting, keyTaken bool
				err := l.pool.QueryRow(context.Background(), sql, args...).Scan(&seq, &enq, &ranked, &served, &fitting, &keyTaken)
				l.done <- err
			}()
			if l.onLost != nil {
				l.onLost()
			}
			return lostRow{row: errRow{}, after: nil}
		}
	}
	return l.DBTX.QueryRow(ctx, sql, args...)
}

// errRow is a row whose Scan does nothing (lostRow then reports the loss).
type errRow struct{}

func (errRow) Scan(...any) error { return nil }

// A join whose statement is held up by a lock when its connection is cut
// commits after the re-check first looked for its row and found none. The
// mark stays until no statement of this instance can still commit
// (statement_timeout), so the row is removed, or what was handed to it
// given back, rather than held by nobody until its TTL (found by review;
// failed before the fix).
func TestAJoinCommittingAfterTheRecheckLookedIsNotServedToNobody(t *testing.T) {
	url := newDB(t)
	var late *lateJoinDB
	a := newAllocatorThrough(t, url, func(pool *pgxpool.Pool) dbsqlc.DBTX {
		late = &lateJoinDB{DBTX: pool, pool: pool}
		return late
	})

	mustCreate(t, a, "d1", "lab", "h:1", nil)
	h1 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder", TTL: time.Hour})

	// A lock the join's foreign-key check waits on (a DBA's SELECT ... FOR
	// UPDATE on the instance's row), not one a DELETE of the waiter waits on.
	lockConn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer lockConn.Close(context.Background())
	lockTx, err := lockConn.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockTx.Exec(t.Context(), `SELECT 1 FROM devalloc.instances WHERE id = $1 FOR UPDATE`, a.instanceID.Load()); err != nil {
		t.Fatal(err)
	}

	ctx, leave := context.WithCancel(t.Context())
	defer leave()
	late.delayNext = true
	late.onLost = leave // the client gives up as the cut is reported
	r := <-goAcquire(ctx, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", Wait: 20 * time.Second, TTL: time.Hour})
	if r.err == nil {
		t.Fatalf("the acquire whose client left was answered with %+v", r.lease)
	}
	t.Logf("the request was answered: %v", r.err)

	// The re-check looks for the row (not there yet), finds no lease, and
	// settles the mark.
	a.rechecker.pass(t.Context())
	t.Logf("marks after the first pass: %v", a.stranded.snapshot())

	// The lock goes; the held-up join commits.
	if err := lockTx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-late.done; err != nil {
		t.Fatalf("the held-up join: %v", err)
	}
	t.Logf("rows in line after the held-up join committed: %d", queueLength(t, a, "lab"))

	if _, err := a.Release(t.Context(), h1.ID); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		a.rechecker.pass(t.Context())
	}
	var n int
	if err := a.pool.QueryRow(t.Context(),
		`SELECT count(*) FROM devalloc.leases WHERE waiter_id = $1 AND released_at IS NULL`, late.id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	d := mustDevice(t, a, "d1")
	if n != 0 || queueLength(t, a, "lab") != 0 {
		t.Fatalf("d1 is %s (lease %v): %d active lease(s) handed to waiter %s, whose request was answered %q, and %d row(s) in line, after 3 re-check passes; held by nobody until its TTL (1h)",
			d.State, d.LeaseID, n, late.id, r.err, queueLength(t, a, "lab"))
	}
}
