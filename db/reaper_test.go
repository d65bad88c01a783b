package db

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// waitingOnLock waits until a statement whose text contains marker (a
// query's sqlc name) is blocked on a lock.
func waitingOnLock(t *testing.T, conn *pgx.Conn, marker string) {
	t.Helper()
	waitFor(t, marker+" blocked on a lock", func() bool {
		var n int
		err := conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'`, marker).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
}

// A renew that started before the lease lapsed and commits after the
// reaper read the lease as due was told 200: the reaper's end step must
// leave that lease alone (expiry is re-checked on the row it locks), or
// two clients would believe they hold the device.
func TestReaperSparesALeaseRenewedAfterItWasReadAsDue(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "board-1", "lab", "h:1", nil)
	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, TTL: 2 * time.Second})

	// Someone holds the lease's row for a moment (a DBA's SELECT FOR
	// UPDATE; in production, any slow statement): the holder's renew,
	// sent well before expiry, waits for it.
	dba, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer dba.Close(context.Background())
	blocker, err := dba.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(context.Background()) //nolint:errcheck // no-op once committed
	if _, err := blocker.Exec(t.Context(), `SELECT 1 FROM devalloc.leases WHERE id = $1 FOR UPDATE`, lease.ID); err != nil {
		t.Fatal(err)
	}
	type renewal struct {
		lease Lease
		err   error
	}
	renewed := make(chan renewal, 1)
	go func() {
		l, err := a.Renew(t.Context(), lease.ID, time.Minute)
		renewed <- renewal{l, err}
	}()
	observer, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer observer.Close(context.Background())
	waitingOnLock(t, observer, "name: RenewLease")

	// The lease lapses by the database clock; the reaper's first step
	// reads it as due (the renew has not committed).
	waitFor(t, "the lease to be due", func() bool {
		ids, err := a.q.DueLeases(t.Context(), reapBatch)
		if err != nil {
			t.Fatal(err)
		}
		return slices.Contains(ids, lease.ID)
	})
	ids, err := a.q.DueLeases(t.Context(), reapBatch)
	if err != nil {
		t.Fatal(err)
	}

	// The renew goes through (it began before expiry): its holder is told 200.
	if err := blocker.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	r := <-renewed
	if r.err != nil {
		t.Fatalf("renew sent before expiry: %v", r.err)
	}

	// The reaper's second step must not end what was just renewed.
	if _, err := a.expire(t.Context(), ids); err != nil {
		t.Fatal(err)
	}
	got, err := a.GetLease(t.Context(), lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Active() || !got.ExpiresAt.Equal(r.lease.ExpiresAt) {
		t.Fatalf("lease renewed until %v (told 200) after the reaper's pass: active=%v end_reason=%q expires_at=%v",
			r.lease.ExpiresAt, got.Active(), got.EndReason, got.ExpiresAt)
	}
	if dev := mustDevice(t, a, "board-1"); dev.State != StateLeased || dev.LeaseID == nil || *dev.LeaseID != lease.ID {
		t.Fatalf("device after the reaper's pass = %+v, want leased by %s", dev, lease.ID)
	}
}
