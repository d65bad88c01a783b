package db

import (
	"testing"
	"time"
)

// An acquire cut off by its bound while a DBA's lock blocks its grant leaves
// nothing behind when the lock goes. The client gives up on the statement
// (closing its connection), but the statement is still waiting for the
// lock in the database; once the lock goes it must not commit a lease that
// nobody was told of, which would keep the device from everyone until the
// lease's TTL. (It does not: its session finds its client gone before the
// commit and rolls back; this guards that.)
func TestAcquireCutOffByALockLeavesNoLease(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)

	dba := dbaLock(t, url, "devalloc.leases", "EXCLUSIVE")
	_, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "cut-off"})
	if err == nil {
		t.Fatal("an acquire behind the DBA's lock got a lease")
	}
	if !IsTransient(err) {
		t.Fatalf("acquire behind the lock: %v, want a transient error", err)
	}
	// The lock goes well before the session's lock_timeout would have
	// ended an abandoned statement.
	time.Sleep(100 * time.Millisecond)
	if err := dba.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the database to go quiet", func() bool {
		var busy int
		if err := a.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&busy); err != nil {
			t.Fatal(err)
		}
		return busy == 0
	})
	var leases int
	if err := a.pool.QueryRow(t.Context(), `SELECT count(*) FROM devalloc.leases WHERE owner = 'cut-off'`).Scan(&leases); err != nil {
		t.Fatal(err)
	}
	if leases != 0 {
		t.Fatalf("%d leases for the acquire that was answered with an error", leases)
	}
	if d := mustDevice(t, a, "d1"); d.State != StateIdle {
		t.Fatalf("d1 is %s, want idle", d.State)
	}
}
