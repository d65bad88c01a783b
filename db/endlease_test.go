package db

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// A release hands its device to a keyed waiter while a direct acquire with
// the same key (its retry, granted without the line) is committing: the
// release's grant then meets the key in the unique index. The release must
// still succeed (the device stays idle, the waiter gets the retry's lease),
// not fail and leave its lease active.
func TestReleaseSucceedsWhenADirectAcquireTakesTheWaitersKey(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	mustCreate(t, a, "d2", "lab", "h:2", nil)
	h1 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})
	h2 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})
	waiting := goAcquire(t.Context(), a, keyed("alice", "k", "lab", 5*time.Second))
	awaitJoin(t, a, "alice")

	// The retry's direct grant of d2, open before its commit: d2 is freed
	// under the table's nose (a DBA's session stands in for the instance
	// whose release and grant raced the line).
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // no-op once committed
	q := dbsqlc.New(tx)
	if _, err := tx.Exec(t.Context(), `SELECT set_config('devalloc.notify_by_caller', 'on', true)`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(t.Context(), `UPDATE devalloc.leases SET released_at = clock_timestamp(), end_reason = 'released' WHERE id = $1`, h2.ID); err != nil {
		t.Fatal(err)
	}
	var d2 int64
	if err := tx.QueryRow(t.Context(), `UPDATE devalloc.devices SET state = 'idle', lease_id = NULL WHERE lease_id = $1 RETURNING id`, h2.ID).Scan(&d2); err != nil {
		t.Fatal(err)
	}
	key := "k"
	req := keyed("alice", "k", "lab", 0)
	retryLease := uuid.New()
	if _, err := q.GrantLease(t.Context(), dbsqlc.GrantLeaseParams{
		LeaseID: retryLease, Owner: "alice", Holder: req.Holder, TtlSeconds: 60, IdempotencyKey: &key,
		RequestFingerprint: req.fingerprintOf(), DeviceID: d2,
	}); err != nil {
		t.Fatalf("the retry's grant: %v", err)
	}

	released := make(chan error, 1)
	go func() {
		_, err := a.Release(t.Context(), h1.ID)
		released <- err
	}()
	var relErr error
	done := false
	waitFor(t, "the release to finish or wait on the retry's grant", func() bool {
		select {
		case relErr = <-released:
			done = true
			return true
		default:
			return lockWaiters(t, a) > 0
		}
	})
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !done {
		relErr = <-released
	}
	if relErr != nil {
		t.Fatalf("the release failed: %v", relErr)
	}
	if l, err := a.GetLease(t.Context(), h1.ID); err != nil || l.Active() {
		t.Fatalf("the released lease: %+v (%v), want ended", l, err)
	}
	r := <-waiting
	if r.err != nil || r.lease.ID != retryLease {
		t.Fatalf("the waiter: %+v %v, want the retry's lease %s", r.lease, r.err, retryLease)
	}
	if n, _ := leaseRows(t, a, "alice", "k"); n != 1 {
		t.Fatalf("%d leases carry the key, want 1", n)
	}
	if d := mustDevice(t, a, "d1"); d.State != StateIdle {
		t.Fatalf("d1 is %s, want idle", d.State)
	}
	checkOneHolder(t, a)
	waitFlights(t, a)
}

// retryGrant is a DBA's session standing in for another instance's direct
// grant of key (a keyed request's retry, granted without the line): it
// frees held's device and grants it under key, and stays open until the
// test commits it.
type retryGrant struct {
	tx    pgx.Tx
	pid   uint32
	lease uuid.UUID
}

func openRetryGrant(t *testing.T, url string, held Lease, owner, key string) retryGrant {
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
	t.Cleanup(func() { tx.Rollback(context.Background()) }) //nolint:errcheck // no-op once committed
	if _, err := tx.Exec(t.Context(), `SELECT set_config('devalloc.notify_by_caller', 'on', true)`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(t.Context(), `UPDATE devalloc.leases SET released_at = clock_timestamp(), end_reason = 'released' WHERE id = $1`, held.ID); err != nil {
		t.Fatal(err)
	}
	var dev int64
	if err := tx.QueryRow(t.Context(), `UPDATE devalloc.devices SET state = 'idle', lease_id = NULL WHERE lease_id = $1 RETURNING id`, held.ID).Scan(&dev); err != nil {
		t.Fatal(err)
	}
	req := keyed(owner, key, "lab", 0)
	g := retryGrant{tx: tx, pid: conn.PgConn().PID(), lease: uuid.New()}
	if _, err := dbsqlc.New(tx).GrantLease(t.Context(), dbsqlc.GrantLeaseParams{
		LeaseID: g.lease, Owner: owner, Holder: req.Holder, TtlSeconds: 60, IdempotencyKey: &key,
		RequestFingerprint: req.fingerprintOf(), DeviceID: dev,
	}); err != nil {
		t.Fatalf("the retry's grant of %q: %v", key, err)
	}
	return g
}

// blockedBy reports whether some session waits on a lock pid holds.
func blockedBy(t *testing.T, a *Allocator, pid uint32) bool {
	t.Helper()
	var n int
	if err := a.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
		WHERE $1::int = ANY (pg_blocking_pids(pid))`, int32(pid)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// Two keyed waiters in line, each with a retry being granted directly at
// the same time: the release's hand-off meets the first key in the unique
// index, and once more the second key on its retry. Each conflict rolled
// the whole statement (or, for a group, transaction) back, so retrying is
// safe: the release must succeed on the third try, not answer 500 after
// the second conflict.
func TestReleaseSucceedsAfterTwoIdempotencyConflictsInARow(t *testing.T) {
	t.Run("lease", func(t *testing.T) {
		releaseAfterTwoConflicts(t, 1, func(a *Allocator, l Lease) error {
			_, err := a.Release(t.Context(), l.ID)
			return err
		})
	})
	t.Run("group", func(t *testing.T) {
		releaseAfterTwoConflicts(t, 2, func(a *Allocator, l Lease) error {
			_, err := a.EndGroup(t.Context(), *l.GroupID, EndReleased)
			return err
		})
	})
}

// releaseAfterTwoConflicts holds count devices in one acquire, ends it with
// release while two keyed waiters' retries are being granted, and checks
// that the release went through and each waiter got its retry's lease.
func releaseAfterTwoConflicts(t *testing.T, count int, release func(*Allocator, Lease) error) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	for i := range count + 2 {
		mustCreate(t, a, fmt.Sprintf("d%d", i+1), "lab", fmt.Sprintf("h:%d", i+1), nil)
	}
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other", Count: count})
	h2 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})
	h3 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})
	first := goAcquire(t.Context(), a, keyed("alice", "k1", "lab", 8*time.Second))
	awaitJoin(t, a, "alice")
	second := goAcquire(t.Context(), a, keyed("alice", "k2", "lab", 8*time.Second))
	awaitJoin(t, a, "alice")

	g1 := openRetryGrant(t, url, h2, "alice", "k1")
	g2 := openRetryGrant(t, url, h3, "alice", "k2")

	released := make(chan error, 1)
	go func() { released <- release(a, held) }()
	waitFor(t, "the release to hand a device to the first waiter and wait on its key's grant", func() bool { return blockedBy(t, a, g1.pid) })
	if err := g1.tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the release's retry to hand a device to the second waiter and wait on its key's grant", func() bool { return blockedBy(t, a, g2.pid) })
	if err := g2.tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-released; err != nil {
		t.Fatalf("the release failed after two conflicts in a row: %v", err)
	}
	for _, l := range append([]Lease{held}, held.Group...) {
		if got, err := a.GetLease(t.Context(), l.ID); err != nil || got.Active() {
			t.Fatalf("a released lease: %+v (%v), want ended", got, err)
		}
	}
	for _, w := range []struct {
		r    <-chan result
		want uuid.UUID
	}{{first, g1.lease}, {second, g2.lease}} {
		r := <-w.r
		if r.err != nil || r.lease.ID != w.want {
			t.Fatalf("a waiter: %+v %v, want its retry's lease %s", r.lease, r.err, w.want)
		}
	}
	if d := mustDevice(t, a, held.Device.Name); d.State != StateIdle {
		t.Fatalf("%s is %s, want idle", held.Device.Name, d.State)
	}
	checkOneHolder(t, a)
	waitFlights(t, a)
}
