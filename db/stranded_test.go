package db

import (
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
)

// A waiting request whose row the database will not let go when its wait
// ends (a DBA's lock on the line) is still answered "no device" at once,
// not after the lock; its row is stranded, a release may hand it the
// device, and the next re-check removes the row and gives the device back.
func TestStrandedWaiterIsClearedByTheRecheck(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})

	waiting := goAcquire(t.Context(), a, AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 300 * time.Millisecond, Owner: "w"})
	awaitJoin(t, a, "w")
	var id uuid.UUID
	if err := a.pool.QueryRow(t.Context(), `SELECT id FROM devalloc.waiters`).Scan(&id); err != nil {
		t.Fatal(err)
	}

	// EXCLUSIVE blocks the row's DELETE, not reads.
	dba := dbaLock(t, url, "devalloc.waiters", "EXCLUSIVE")
	r := <-waiting
	if !errors.Is(r.err, ErrNoDevice) {
		t.Fatalf("the waiter cut off from leaving: %+v %v, want ErrNoDevice", r.lease, r.err)
	}
	if n := queueLength(t, a, "lab"); n != 1 {
		t.Fatalf("%d rows in line while the DBA's lock holds, want the stranded one", n)
	}
	if err := dba.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}

	// Nobody took the row out yet: the release hands it the device.
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	var handed int
	if err := a.pool.QueryRow(t.Context(), `SELECT count(*) FROM devalloc.leases WHERE waiter_id = $1 AND released_at IS NULL`, id).Scan(&handed); err != nil || handed != 1 {
		t.Fatalf("%d active leases handed to the stranded row (%v), want 1", handed, err)
	}

	a.rechecker.pass(t.Context())
	if n := queueLength(t, a, "lab"); n != 0 {
		t.Fatalf("%d rows in line after the re-check, want 0", n)
	}
	if d := mustDevice(t, a, "d1"); d.State != StateIdle {
		t.Fatalf("d1 is %s after the re-check, want idle (given back)", d.State)
	}
	if left := a.stranded.snapshot(); len(left) != 0 {
		t.Fatalf("still stranded after a clean pass: %v", left)
	}
}

// A join that failed may strand its waiter's id, and the retried join then
// succeed: that row is the waiter's own, so the mark goes, and while the
// waiter is still here the re-check leaves its row alone.
func TestStrandedMarkYieldsToALiveWaiter(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})

	req := AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", TTL: time.Minute}
	w := a.hub.Join(req.Selector)
	defer w.Leave()
	a.stranded.add(w.ID, false)
	a.rechecker.pass(t.Context())
	if _, ok := a.stranded.snapshot()[w.ID]; !ok {
		t.Fatal("the mark of a waiter still here was dropped by the re-check")
	}
	if _, _, err := a.enqueue(t.Context(), req, w.ID, nil, time.Second); err != nil {
		t.Fatal(err)
	}
	if left := a.stranded.snapshot(); len(left) != 0 {
		t.Fatalf("still marked stranded after its join succeeded: %v", left)
	}
	a.rechecker.pass(t.Context())
	if n := queueLength(t, a, "lab"); n != 1 {
		t.Fatalf("%d rows in line, want the waiter's own", n)
	}
}
