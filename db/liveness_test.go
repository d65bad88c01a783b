package db

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// livenessLockClass is the first key of every instance's liveness lock
// (devalloc.instance_alive).
const livenessLockClass = 1685482609

// ghostInstance is an instance whose host crashed (or was cut off without a
// FIN/RST): PostgreSQL keeps its listener session, and so its liveness lock,
// but its heartbeat stopped long ago. A separate session holds the lock
// until the test ends. It has one waiter per entry of waiters in pool.
func ghostInstance(t *testing.T, a *Allocator, url, pool string, waiters int) (int64, []uuid.UUID) {
	t.Helper()
	return ghostInstanceSilentFor(t, a, url, pool, waiters, time.Hour)
}

// ghostInstanceSilentFor is ghostInstance whose last heartbeat was silent
// ago (its bound being the default 30 s).
func ghostInstanceSilentFor(t *testing.T, a *Allocator, url, pool string, waiters int, silent time.Duration) (int64, []uuid.UUID) {
	t.Helper()
	var id int64
	if err := a.pool.QueryRow(t.Context(), `INSERT INTO devalloc.instances (name, seen_at)
		VALUES ('crashed-host:1', now() - make_interval(secs => $1)) RETURNING id`, silent.Seconds()).Scan(&id); err != nil {
		t.Fatal(err)
	}
	session, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { session.Close(context.Background()) })
	if _, err := session.Exec(t.Context(), `SELECT pg_advisory_lock($1, $2::int4)`, livenessLockClass, id); err != nil {
		t.Fatal(err)
	}
	ids := make([]uuid.UUID, waiters)
	for i := range ids {
		ids[i] = uuid.New()
		if _, err := a.pool.Exec(t.Context(), `INSERT INTO devalloc.waiters (id, instance_id, pool, ranked_at, owner, ttl_seconds)
			VALUES ($1, $2, $3, clock_timestamp(), 'ghost', 60)`, ids[i], id, pool); err != nil {
			t.Fatal(err)
		}
	}
	return id, ids
}

// The waiters of an instance whose liveness lock is still held but whose
// heartbeat is older than its bound (a crashed host whose session the
// server keeps) are skipped by a release and by the dispatcher: nobody
// would collect what they were handed.
func TestStaleInstanceWaitersAreNotServed(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	ghost, waiters := ghostInstance(t, a, url, "lab", 2)

	var alive bool
	if err := a.pool.QueryRow(t.Context(), `SELECT devalloc.instance_alive($1)`, ghost).Scan(&alive); err != nil || alive {
		t.Fatalf("instance_alive of a silent instance whose lock is held: %v (%v), want false", alive, err)
	}
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, a, "d2", "lab", "h:2", nil)
	a.dispatch(t.Context(), "lab", queueBound)

	var handed int
	if err := a.pool.QueryRow(t.Context(), `SELECT count(*) FROM devalloc.leases WHERE waiter_id = ANY($1)`, waiters).Scan(&handed); err != nil || handed != 0 {
		t.Fatalf("%d leases handed to the waiters of a crashed host (%v)", handed, err)
	}
	for _, name := range []string{"d1", "d2"} {
		if d := mustDevice(t, a, name); d.State != StateIdle {
			t.Fatalf("%s with only a crashed host's waiters in line is %s, want idle", name, d.State)
		}
	}
}

// An instance whose heartbeat is fresh and whose lock is held is alive:
// the bound on the heartbeat's age does not skip live waiters.
func TestFreshInstanceIsAlive(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	var alive bool
	if err := a.pool.QueryRow(t.Context(), `SELECT devalloc.instance_alive($1)`, a.instanceID.Load()).Scan(&alive); err != nil || !alive {
		t.Fatalf("instance_alive of a running instance: %v (%v), want true", alive, err)
	}
}

// After an outage long enough for another instance to remove this
// instance's row, a request that waits still joins the line (the instance
// puts its row back) and is served, rather than failing on the waiters'
// foreign key.
func TestJoinAfterTheInstanceRowWasRemoved(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	if _, err := a.pool.Exec(t.Context(), `DELETE FROM devalloc.instances WHERE id = $1`, a.instanceID.Load()); err != nil {
		t.Fatal(err)
	}

	waiting := goAcquire(t.Context(), a, AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 10 * time.Second, Owner: "w"})
	joined := func() bool { return queueLength(t, a, "lab") == 1 }
	for !joined() {
		select {
		case r := <-waiting:
			t.Fatalf("acquire with wait after the instance row went: %+v %v, want it in line", r.lease, r.err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	if r := <-waiting; r.err != nil || r.lease.Owner != "w" {
		t.Fatalf("the waiter after its instance row was put back: %+v %v", r.lease, r.err)
	}
}

// A request already waiting when another instance removed this instance's
// row (taking the waiter's row with it) is not lost: when the heartbeat puts
// the row back, the waiter learns its row went and rejoins at its place,
// and is served by the next release.
func TestWaitersRejoinWhenTheHeartbeatPutsTheRowBack(t *testing.T) {
	url := newDB(t)
	cfg := testConfig(&fakeProber{})
	cfg.HeartbeatInterval = 100 * time.Millisecond
	a := newAllocator(t, url, cfg)
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	waiting := goAcquire(t.Context(), a, AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 20 * time.Second, Owner: "w"})
	awaitJoin(t, a, "w")

	if _, err := a.pool.Exec(t.Context(), `DELETE FROM devalloc.instances WHERE id = $1`, a.instanceID.Load()); err != nil {
		t.Fatal(err)
	}
	awaitJoin(t, a, "w")
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	if r := <-waiting; r.err != nil || r.lease.Owner != "w" {
		t.Fatalf("the waiter whose row went with its instance's: %+v %v", r.lease, r.err)
	}
}

// The rows of an instance whose session lingers are kept for a while (it
// may only have been cut off, by a database restart say, and will beat
// again), but not for ever: past 10 x its bound they go, lock or not.
func TestForgettingALingeringInstanceWaitsLonger(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	recent, _ := ghostInstanceSilentFor(t, a, url, "lab", 1, time.Minute)
	old, _ := ghostInstanceSilentFor(t, a, url, "lab", 1, time.Hour)
	if _, err := a.q.ForgetGoneInstances(t.Context(), 0.1); err != nil {
		t.Fatal(err)
	}
	left := map[int64]bool{}
	rows, err := a.pool.Query(t.Context(), `SELECT id FROM devalloc.instances`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		left[id] = true
	}
	if !left[recent] || left[old] || !left[a.instanceID.Load()] {
		t.Fatalf("instances left %v: want the one silent for a minute (%d) and the live one (%d), not the one silent for an hour (%d)",
			ids, recent, a.instanceID.Load(), old)
	}
	if n := queueLength(t, a, "lab"); n != 1 {
		t.Fatalf("%d waiters left, want the lingering instance's one", n)
	}
}

// An instance whose listener reconnects after an outage past its heartbeat
// bound beats at once, so its waiters are served again as soon as it has
// its lock back, not one heartbeat interval later.
func TestReconnectedInstanceBeatsAtOnce(t *testing.T) {
	url := newDB(t)
	cfg := testConfig(&fakeProber{})
	cfg.HeartbeatInterval = time.Hour // only the reconnect beats
	a := newAllocator(t, url, cfg)
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	waiting := goAcquire(t.Context(), a, AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 20 * time.Second, Owner: "w"})
	awaitJoin(t, a, "w")

	// The outage: silent past the bound, and the listener's session cut.
	if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.instances SET seen_at = now() - silent_after - interval '1 minute' WHERE id = $1`, a.instanceID.Load()); err != nil {
		t.Fatal(err)
	}
	var oldPID int
	if err := a.pool.QueryRow(t.Context(), `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND granted`, livenessLockClass).Scan(&oldPID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.pool.Exec(t.Context(), `SELECT pg_terminate_backend($1)`, oldPID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the listener to take its lock again", func() bool {
		var pid int
		err := a.pool.QueryRow(t.Context(), `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND granted`, livenessLockClass).Scan(&pid)
		return err == nil && pid != oldPID
	})
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-waiting:
		if r.err != nil || r.lease.Owner != "w" {
			t.Fatalf("the waiter of a reconnected instance: %+v %v", r.lease, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter of a reconnected instance was not served within 10 s of a release")
	}
}

// While this instance's heartbeat cannot get through for longer than its
// bound, the line skips its waiters (a device freed meanwhile stays idle);
// when the heartbeat resumes they are re-checked and served, not left
// waiting for a notice that will never come.
func TestWaitersSkippedWhileTheHeartbeatFailedAreServedWhenItResumes(t *testing.T) {
	url := newDB(t)
	cfg := testConfig(&fakeProber{})
	cfg.HeartbeatInterval = 100 * time.Millisecond
	a := newAllocator(t, url, cfg)
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	waiting := goAcquire(t.Context(), a, AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 20 * time.Second, Owner: "w"})
	awaitJoin(t, a, "w")

	// A DBA's lock holds the heartbeat back (reads go on).
	dba := dbaLock(t, url, "devalloc.instances", "EXCLUSIVE")
	waitFor(t, "the line to count this instance dead", func() bool {
		var alive bool
		if err := a.pool.QueryRow(t.Context(), `SELECT devalloc.instance_alive($1)`, a.instanceID.Load()).Scan(&alive); err != nil {
			t.Fatal(err)
		}
		return !alive
	})
	// Released at another instance; the notice it sends would be handled
	// while this instance is still skipped, so it is left out (silent).
	if _, err := silentInstance(a).Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	if d := mustDevice(t, a, "d1"); d.State != StateIdle {
		t.Fatalf("d1 released while its only waiter's instance is silent: %s, want idle", d.State)
	}
	if err := dba.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-waiting:
		if r.err != nil || r.lease.Owner != "w" {
			t.Fatalf("the waiter skipped while its heartbeat failed: %+v %v", r.lease, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter skipped while its heartbeat failed was not served within 10 s of the heartbeat resuming")
	}
}
