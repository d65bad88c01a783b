package db

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// makeIdleSilently puts a device back to idle the way no waiter hears of:
// no idle notice (the transaction says its caller notifies, and nobody
// does) and no handoff, as when a notification is lost.
func makeIdleSilently(t *testing.T, url, name string) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	err = pgx.BeginFunc(t.Context(), conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(t.Context(), `SELECT set_config('devalloc.notify_by_caller', 'on', true)`); err != nil {
			return err
		}
		_, err := tx.Exec(t.Context(), `UPDATE devalloc.devices SET state = 'idle', state_reason = '', idle_since = now()
			WHERE name = $1`, name)
		return err
	})
	if err != nil {
		t.Fatalf("make %s idle silently: %v", name, err)
	}
}

// In a labelled pool whose longest-idle devices fit nobody, the re-check
// still finds the one freshly idle device that fits the waiter (its notice
// lost) and serves it: it looks per waiting selector, not at the first
// min(waiting, 1000) idle devices.
func TestRecheckFindsTheOneFittingDeviceBehindManyIdleOnes(t *testing.T) {
	url := newDB(t)
	cfg := testConfig(&fakeProber{})
	cfg.RecheckInterval = 100 * time.Millisecond
	a := newAllocator(t, url, cfg)
	for i := range 20 {
		mustCreate(t, a, fmt.Sprintf("old-%02d", i), "lab", "h:1", Labels{"kind": "old"})
	}
	mustCreate(t, a, "new", "lab", "h:2", Labels{"kind": "new"})
	if _, err := a.UpdateDevice(t.Context(), "new", DevicePatch{State: ptr(StateMaintenance)}); err != nil {
		t.Fatal(err)
	}
	waiting := goAcquire(t.Context(), a, AcquireRequest{
		Selector: Selector{Pool: "lab", Labels: Labels{"kind": "new"}}, Wait: 5 * time.Second, Owner: "w",
	})
	awaitJoin(t, a, "w")
	makeIdleSilently(t, url, "new")
	r := <-waiting
	if r.err != nil || r.lease.Device.Name != "new" {
		t.Fatalf("waiter: %+v, %v; want the device new, found by the re-check", r.lease, r.err)
	}
}

// A group that leaves the line gives the devices it was holding back to
// the waiters behind it at once, not at the next periodic re-check (which
// is an hour away here).
func TestGroupLeavingTheLineReleasesTheDevicesItHeldBack(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	for i := range 3 {
		mustCreateProbed(t, a, fmt.Sprintf("d%d", i), "lab", "h:1", "none", nil)
	}
	lab := Selector{Pool: "lab"}
	mustAcquire(t, a, AcquireRequest{Selector: lab, Owner: "single"})
	groupCtx, leave := context.WithCancel(t.Context())
	group := goAcquire(groupCtx, a, AcquireRequest{Selector: lab, Count: 3, Owner: "g", Wait: time.Minute})
	awaitJoin(t, a, "g")
	behind := goAcquire(t.Context(), a, AcquireRequest{Selector: lab, Owner: "w", Wait: time.Minute})
	awaitJoin(t, a, "w")
	leave()
	if r := <-group; r.err == nil {
		t.Fatalf("the group that left got %+v", r.lease)
	}
	select {
	case r := <-behind:
		if r.err != nil {
			t.Fatalf("the waiter behind the group: %v", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter behind a group that left was not served the idle devices it had held back")
	}
}
