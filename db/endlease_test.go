package db

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/dbsqlc"
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
	waitFor(t, "the waiter in line", func() bool { return queueLength(t, a, "lab") == 1 })

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
