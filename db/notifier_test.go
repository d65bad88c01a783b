package db

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/wake"
)

// listen returns a connection listening on the idle channel, as another
// instance's listener would.
func listen(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(t.Context(), "LISTEN "+wake.IdleChannel); err != nil {
		t.Fatal(err)
	}
	return conn
}

func nextNotification(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	n, err := conn.WaitForNotification(ctx)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return n.Payload
}

// A release does not NOTIFY inside its transaction (the trigger stands
// aside); the instance sends a batch after commit, naming itself, the pool,
// the device and its labels.
func TestReleaseNotifiesAfterCommitInABatch(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", Labels{"os": "android"})
	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	conn := listen(t, url)
	if _, err := a.Release(t.Context(), lease.ID); err != nil {
		t.Fatal(err)
	}
	// The batch as another instance reads it off the wire.
	var batch struct {
		From string `json:"from"`
		Idle []struct {
			Pool   string          `json:"pool"`
			Device int64           `json:"device"`
			Labels json.RawMessage `json:"labels"`
		} `json:"idle"`
	}
	if err := json.Unmarshal([]byte(nextNotification(t, conn)), &batch); err != nil {
		t.Fatal(err)
	}
	if batch.From != a.notifier.Self() || len(batch.Idle) != 1 || batch.Idle[0].Pool != "lab" || !strings.Contains(string(batch.Idle[0].Labels), "android") {
		t.Fatalf("batch = %+v, want one device of pool lab from this instance", batch)
	}
	// The batch is the only notification: the trigger stood aside.
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if n, err := conn.WaitForNotification(ctx); err == nil {
		t.Fatalf("a second notification for one release: %s", n.Payload)
	}
	// Its own listener skips the batch; another instance's reads it.
	if evs := wake.ParseIdleNotification(mustJSON(t, batch), a.notifier.Self()); len(evs) != 0 {
		t.Fatalf("own batch parsed into %v", evs)
	}
	evs := wake.ParseIdleNotification(mustJSON(t, batch), "another")
	if len(evs) != 1 || !evs[0].LabelsKnown || evs[0].Labels["os"] != "android" {
		t.Fatalf("another instance reads %+v", evs)
	}
}

// Anything else that makes a device idle, a DBA's UPDATE included, still
// notifies from the trigger.
func TestDBAUpdateStillNotifiesFromTheTrigger(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	conn := listen(t, url)
	if _, err := conn.Exec(t.Context(), `UPDATE devalloc.devices SET state = 'maintenance'`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(t.Context(), `UPDATE devalloc.devices SET state = 'idle'`); err != nil {
		t.Fatal(err)
	}
	ev := wake.ParseIdleNotification(nextNotification(t, conn), a.notifier.Self())
	if len(ev) != 1 || ev[0].Pool != "lab" || !ev[0].LabelsKnown {
		t.Fatalf("trigger notification read as %+v", ev)
	}
}

// An expiry on one instance wakes a waiter on another (the reaper's batch).
func TestExpiryWakesAWaiterOnAnotherInstance(t *testing.T) {
	url := newDB(t)
	reaping := newAllocator(t, url, testConfig(&fakeProber{}))
	waiter := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, reaping, "d1", "lab", "h:1", nil)
	mustAcquire(t, reaping, AcquireRequest{Selector: Selector{Pool: "lab"}, TTL: 50 * time.Millisecond})
	got := make(chan error, 1)
	go func() {
		_, err := waiter.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 10 * time.Second, Owner: "w"})
		got <- err
	}()
	awaitJoin(t, waiter, "w")
	time.Sleep(100 * time.Millisecond) // past the lease's expiry
	if n := reaping.reaper.pass(t.Context()); n != 1 {
		t.Fatalf("reaped %d leases, want 1", n)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second): // re-checks are off: only the batch can wake it
		t.Fatal("waiter not woken by the reaper's notification")
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// With ListenConnConfig the LISTEN connection goes where it says (e.g.
// straight to PostgreSQL past a transaction pooler), and wake-ups from
// other instances arrive through it.
func TestListenerUsesItsOwnConnConfig(t *testing.T) {
	url := newDB(t)
	listenTo, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	listenTo.RuntimeParams["application_name"] = "devalloc-own-listener"
	cfg := testConfig(&fakeProber{})
	cfg.ListenConnConfig = listenTo
	waiter := newAllocator(t, url, cfg)
	holder := newAllocator(t, url, testConfig(&fakeProber{}))
	waitFor(t, "the listener on its own connection", func() bool {
		var n int
		err := holder.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = 'devalloc-own-listener'`).Scan(&n)
		return err == nil && n == 1
	})
	mustCreate(t, holder, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, holder, AcquireRequest{Selector: Selector{Pool: "lab"}})
	got := make(chan error, 1)
	go func() {
		_, err := waiter.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 10 * time.Second, Owner: "w"})
		got <- err
	}()
	awaitJoin(t, waiter, "w")
	if _, err := holder.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second): // re-checks are off: only the notification can wake it
		t.Fatal("the waiter was not woken through its listener")
	}
}

// The payload bound is one number: the SQL senders' (served notices, idle
// triggers) and the notifier's.
func TestPayloadLimitIsTheSameInSQLAndGo(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	var limit int
	if err := a.pool.QueryRow(t.Context(), `SELECT devalloc.notify_payload_limit()`).Scan(&limit); err != nil {
		t.Fatal(err)
	}
	if limit != wake.MaxPayload {
		t.Errorf("devalloc.notify_payload_limit() is %d, wake.MaxPayload %d", limit, wake.MaxPayload)
	}
}

// devalloc.served_lease is STABLE (timestamps render in the session's time
// zone): marked IMMUTABLE it was not inlined, and every handoff paid a
// function call (the ninth review measured +23 µs a notice).
func TestServedLeaseIsStable(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	var volatility string
	if err := a.pool.QueryRow(t.Context(), `SELECT provolatile::text FROM pg_proc WHERE proname = 'served_lease'`).Scan(&volatility); err != nil {
		t.Fatal(err)
	}
	if volatility != "s" {
		t.Errorf("devalloc.served_lease volatility %q, want s (STABLE)", volatility)
	}
}
