package db

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// Retries of one keyed request waiting in line at several instances.

// openRelease ends a lease the way a release does (EndLease) in a
// transaction left open, as a release stalled just before its commit; the
// caller commits it (rolled back when the test ends at the latest).
func openRelease(t *testing.T, url string, id uuid.UUID) (pgx.Tx, dbsqlc.EndLeaseRow) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	tx, err := conn.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback(context.Background()) }) //nolint:errcheck // no-op once ended
	r, err := dbsqlc.New(tx).EndLease(t.Context(), dbsqlc.EndLeaseParams{ID: id, EndReason: EndReleased})
	if err != nil {
		t.Fatalf("the stalled release: %v", err)
	}
	return tx, r
}

// lockWaiters counts the sessions of the test's database waiting on a
// heavyweight lock (a row, a transaction, an advisory lock).
func lockWaiters(t *testing.T, a *Allocator) int {
	t.Helper()
	var n int
	if err := a.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// checkOneHolder fails the test when a device has two active leases, or a
// leased device does not point at its one active lease.
func checkOneHolder(t *testing.T, a *Allocator) {
	t.Helper()
	var bad int
	err := a.pool.QueryRow(t.Context(), `SELECT
		(SELECT count(*) FROM (SELECT device_id FROM devalloc.leases WHERE released_at IS NULL
		                       GROUP BY device_id HAVING count(*) > 1) twice)
		+ (SELECT count(*) FROM devalloc.devices d WHERE d.state = 'leased' AND NOT EXISTS (
		       SELECT 1 FROM devalloc.leases l WHERE l.id = d.lease_id AND l.released_at IS NULL))`).Scan(&bad)
	if err != nil || bad != 0 {
		t.Fatalf("%d devices with two holders or a leased device without its lease (%v)", bad, err)
	}
}

// Retries of one keyed request wait at two instances; two leases are
// released at once, each handing its device to one of the two waiters. The
// second release must not fail on the key the first one is granting: it
// leaves that waiter in line (its retry gets the first one's lease) and
// succeeds. The first release is held open before its commit, so the two
// overlap every time.
func TestConcurrentReleasesToRetriesOfOneKeyBothSucceed(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	mustCreate(t, a, "d2", "lab", "h:2", nil)
	h1 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})
	h2 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})

	ra := goAcquire(t.Context(), a, keyed("alice", "k", "lab", 5*time.Second))
	rb := goAcquire(t.Context(), b, keyed("alice", "k", "lab", 5*time.Second))
	waitFor(t, "both retries in line", func() bool { return queueLength(t, a, "lab") == 2 })

	first, ended := openRelease(t, url, h1.ID)
	if ended.HandedTo == nil {
		t.Fatalf("the first release handed its device to nobody: %+v", ended)
	}
	second := make(chan error, 1)
	go func() {
		_, err := b.Release(t.Context(), h2.ID)
		second <- err
	}()
	// Either it finishes without the first's commit, or it waits on it.
	var secondErr error
	done := false
	waitFor(t, "the second release to finish or wait on the first", func() bool {
		select {
		case secondErr = <-second:
			done = true
			return true
		default:
			return lockWaiters(t, a) > 0
		}
	})
	if err := first.Commit(t.Context()); err != nil {
		t.Fatalf("the first release's commit: %v", err)
	}
	if !done {
		// Passing the waiter whose key is being granted by the other, it
		// need not wait for that commit at all.
		t.Errorf("the second release waited on the first one's commit")
		secondErr = <-second
	}
	if secondErr != nil {
		t.Fatalf("the second release failed: %v", secondErr)
	}
	if l, err := a.GetLease(t.Context(), h2.ID); err != nil || l.Active() || l.EndReason != EndReleased {
		t.Fatalf("the second released lease: %+v (%v), want ended as released", l, err)
	}

	r1, r2 := <-ra, <-rb
	if r1.err != nil || r2.err != nil {
		t.Fatalf("instance a: %v, instance b: %v", r1.err, r2.err)
	}
	if r1.lease.ID != r2.lease.ID || !r1.lease.Active() {
		t.Fatalf("the retries got %s and %s (active %v), want one live lease", r1.lease.ID, r2.lease.ID, r1.lease.Active())
	}
	if n, _ := leaseRows(t, a, "alice", "k"); n != 1 {
		t.Fatalf("%d leases carry the key, want 1", n)
	}
	checkOneHolder(t, a)
	waitFlights(t, a)
	waitFlights(t, b)
}
