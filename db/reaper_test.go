package db

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
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
	var due []dbsqlc.DueLeasesRow
	waitFor(t, "the lease to be due", func() bool {
		var err error
		due, err = a.q.DueLeases(t.Context(), dbsqlc.DueLeasesParams{Batch: reapBatch, ProbeTimeoutSeconds: a.cfg.ProbeTimeout.Seconds()})
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(due, func(d dbsqlc.DueLeasesRow) bool { return d.ID == lease.ID })
	})

	// The renew goes through (it began before expiry): its holder is told 200.
	if err := blocker.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	r := <-renewed
	if r.err != nil {
		t.Fatalf("renew sent before expiry: %v", r.err)
	}

	// The reaper's second step must not end what was just renewed.
	if _, err := a.reaper.expire(t.Context(), due); err != nil {
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

// reapObserver counts what the reaper reports.
type reapObserver struct {
	nopObserver
	reaped, failed atomic.Int64
}

func (o *reapObserver) LeasesReaped(n int) { o.reaped.Add(int64(n)) }
func (o *reapObserver) ReapFailed()        { o.failed.Add(1) }

// More than a batch of expired leases that cannot be ended (a DBA's
// trigger refuses them), all due before two good ones: one reaper pass
// still ends the good ones, reports each bad one, and the next pass does
// not spin on the bad ones again.
func TestReaperSkipsLeasesItCannotEnd(t *testing.T) {
	url := newDB(t)
	obs := &reapObserver{}
	cfg := testConfig(&fakeProber{})
	cfg.Observer = obs
	a := newAllocator(t, url, cfg)
	const bad, good = reapBatch + 1, 2
	for i := range bad + good {
		mustCreate(t, a, fmt.Sprintf("d%03d", i), "lab", fmt.Sprintf("h:%d", i), nil)
	}
	// The bad ones expire first (oldest first is the reaper's order).
	for range bad {
		mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "broken", TTL: 100 * time.Millisecond})
	}
	var goodLeases []Lease
	for range good {
		goodLeases = append(goodLeases, mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "fine", TTL: 100 * time.Millisecond}))
	}
	if _, err := a.pool.Exec(t.Context(), `
		CREATE FUNCTION public.refuse_broken() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF OLD.owner = 'broken' THEN
				RAISE EXCEPTION 'lease % cannot be changed (a DBA''s edit)', OLD.id;
			END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER refuse_broken BEFORE UPDATE ON devalloc.leases
			FOR EACH ROW EXECUTE FUNCTION public.refuse_broken();`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every lease to be due", func() bool {
		var n int
		if err := a.pool.QueryRow(t.Context(), `SELECT count(*) FROM devalloc.leases
			WHERE released_at IS NULL AND expires_at <= now()`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == bad+good
	})

	if n := a.reaper.pass(t.Context()); n != good {
		t.Fatalf("one pass ended %d leases, want the %d good ones (behind %d that cannot end)", n, good, bad)
	}
	for _, l := range goodLeases {
		if got, err := a.GetLease(t.Context(), l.ID); err != nil || got.EndReason != EndExpired {
			t.Fatalf("good lease after the pass = %+v, %v", got, err)
		}
	}
	if f := obs.failed.Load(); f != bad {
		t.Fatalf("%d failures reported, want %d", f, bad)
	}
	if r := obs.reaped.Load(); r != good {
		t.Fatalf("%d reaped reported, want %d", r, good)
	}
	// The next pass does not try them again at once: no spinning, no flood.
	if n := a.reaper.pass(t.Context()); n != 0 {
		t.Fatalf("second pass ended %d", n)
	}
	if f := obs.failed.Load(); f != bad {
		t.Fatalf("%d failures after a second pass, want still %d (the bad ones wait their cool-down)", f, bad)
	}
}

// A lock timeout is the server failing one statement for now, not refusing
// the row: an expired lease whose end timed out once on a DBA's row lock
// must be ended on the next pass after the lock goes, not left to its dead
// holder for the minute-long cool-down of a lease the database refuses.
func TestReaperRetriesALeaseWhoseEndTimedOutOnALock(t *testing.T) {
	url := newDB(t)
	obs := &reapObserver{}
	cfg := testConfig(&fakeProber{})
	cfg.Observer = obs
	// Every statement of this instance waits at most 200 ms for a lock
	// (serve sets lock_timeout the same way, as a connection parameter).
	a := newAllocator(t, withRuntimeParam(t, url, "lock_timeout", "200"), cfg)
	mustCreate(t, a, "board-1", "lab", "h:1", nil)
	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, TTL: 100 * time.Millisecond})
	waitFor(t, "the lease to be due", func() bool {
		due, err := a.q.DueLeases(t.Context(), dbsqlc.DueLeasesParams{Batch: reapBatch, ProbeTimeoutSeconds: a.cfg.ProbeTimeout.Seconds()})
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(due, func(d dbsqlc.DueLeasesRow) bool { return d.ID == lease.ID })
	})

	dba, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer dba.Close(context.Background())
	blocker, err := dba.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(context.Background()) //nolint:errcheck // no-op once rolled back
	if _, err := blocker.Exec(t.Context(), `SELECT 1 FROM devalloc.leases WHERE id = $1 FOR UPDATE`, lease.ID); err != nil {
		t.Fatal(err)
	}
	if n := a.reaper.pass(t.Context()); n != 0 {
		t.Fatalf("a pass under the DBA's lock ended %d leases", n)
	}
	if err := blocker.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}

	ended := 0
	for range 2 {
		ended += a.reaper.pass(t.Context())
	}
	got, err := a.GetLease(t.Context(), lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	if ended != 1 || got.EndReason != EndExpired {
		t.Fatalf("two passes after the lock went ended %d leases; the lease: active=%v end_reason=%q (its end timed out once on a lock)",
			ended, got.Active(), got.EndReason)
	}
	if dev := mustDevice(t, a, "board-1"); dev.State != StateIdle {
		t.Fatalf("device after the lease expired = %s, want idle", dev.State)
	}
	if f := obs.failed.Load(); f != 0 {
		t.Fatalf("%d refusals reported for a lock timeout, want 0 (it is no refusal)", f)
	}
}

// withRuntimeParam adds a server setting to a connection URL (pgx sends
// unknown URL parameters as run-time parameters at connect).
func withRuntimeParam(t *testing.T, dbURL, name, value string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set(name, value)
	u.RawQuery = q.Encode()
	return u.String()
}

// The reaper as a service: Start runs passes (here every 10 ms) until
// Stop, and a test waits for a pass's signal rather than polling the lease.
func TestReaperServiceEndsAnExpiredLease(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	l := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, TTL: time.Hour})
	if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.leases SET expires_at = now() - interval '1 ms' WHERE id = $1`, l.ID); err != nil {
		t.Fatal(err)
	}
	r := &reaper{q: a.q, interval: 10 * time.Millisecond, probeTimeout: time.Second, log: a.log,
		observer: a.cfg.Observer, ended: a.endedLease}
	r.passed.Init()
	r.Start(t.Context())
	n := r.passed.Wait(t, "a reaper pass", 10*time.Second)
	r.Stop()
	if n != 1 {
		t.Fatalf("the first pass ended %d leases, want 1", n)
	}
	if got, err := a.GetLease(t.Context(), l.ID); err != nil || got.Active() || got.EndReason != EndExpired {
		t.Fatalf("lease after the pass: active %v, end reason %q (%v); want ended as expired", got.Active(), got.EndReason, err)
	}
}
