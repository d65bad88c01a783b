package db

import (
	"strings"
	"testing"
	"time"
)

// Pruning deletes the leases that ended before the cutoff, in batches, and
// keeps recent history and every active lease, however old.
func TestPruneDeletesOnlyOldEndedLeases(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	mustCreate(t, a, "d2", "lab", "h:2", nil)
	for range 5 {
		l := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, TTL: time.Hour})
		if _, err := a.Release(t.Context(), l.ID); err != nil {
			t.Fatal(err)
		}
	}
	recent := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, TTL: time.Hour})
	if _, err := a.Release(t.Context(), recent.ID); err != nil {
		t.Fatal(err)
	}
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, TTL: time.Hour})
	// Age everything but the recent one by 40 days: five ended leases and
	// the active one.
	if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.leases SET
		acquired_at = acquired_at - interval '40 days', expires_at = expires_at - interval '40 days' + interval '41 days',
		released_at = released_at - interval '40 days' WHERE id <> $1`, recent.ID); err != nil {
		t.Fatal(err)
	}
	if n := a.pruner.prune(t.Context(), time.Now().Add(-30*24*time.Hour), 2); n != 5 {
		t.Fatalf("pruned %d leases, want the 5 old ended ones", n)
	}
	if got, err := a.GetLease(t.Context(), recent.ID); err != nil || got.EndReason != EndReleased {
		t.Fatalf("the recent ended lease: %+v, %v", got, err)
	}
	if got, err := a.GetLease(t.Context(), held.ID); err != nil || !got.Active() {
		t.Fatalf("the old active lease: %+v, %v", got, err)
	}
	if n := a.pruner.prune(t.Context(), time.Now().Add(-30*24*time.Hour), 2); n != 0 {
		t.Fatalf("second prune deleted %d", n)
	}
}

// With no retention the pruner does not run at all; with one, it runs
// passes until Stop, which waits for the pass in flight.
func TestPrunerRunsOnlyWithRetention(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	off := &pruner{q: a.q, interval: time.Millisecond, log: a.log}
	off.Start(t.Context())
	off.loop.mu.Lock()
	started := off.loop.cancel != nil
	off.loop.mu.Unlock()
	off.Stop()
	if started {
		t.Error("the pruner started with no retention")
	}
	on := &pruner{q: a.q, interval: 10 * time.Millisecond, retention: time.Hour, log: a.log}
	on.passed.Init()
	on.Start(t.Context())
	on.passed.Wait(t, "a pruning pass", 10*time.Second)
	on.Stop()
}

// Going offline, coming back and maintenance are recorded as device events
// (a DBA's UPDATE too); acquires and releases are not; old events are
// pruned with the history.
func TestDeviceEventsRecordedAndPruned(t *testing.T) {
	p := &fakeProber{}
	a := newAllocator(t, newDB(t), testConfig(p))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	l := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	if _, err := a.Release(t.Context(), l.ID); err != nil {
		t.Fatal(err)
	}
	p.setDead("h:1", true)
	if _, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "x"}); err == nil {
		t.Fatal("acquired a dead device")
	}
	p.setDead("h:1", false)
	if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.devices SET next_probe_at = now()`); err != nil {
		t.Fatal(err)
	}
	if n := a.health.pass(t.Context()); n != 1 {
		t.Fatalf("recovered %d devices, want 1", n)
	}
	if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.devices SET state = 'maintenance', state_reason = 'new cable'`); err != nil {
		t.Fatal(err)
	}
	rows, err := a.pool.Query(t.Context(), `SELECT from_state || '>' || to_state || ':' || reason FROM devalloc.device_events ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		got = append(got, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{"idle>offline:tcp h:1: connection refused", "offline>idle:", "idle>maintenance:new cable"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("events %q, want %q", got, want)
	}
	if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.device_events SET at = at - interval '40 days' WHERE to_state <> 'maintenance'`); err != nil {
		t.Fatal(err)
	}
	if n := a.pruner.prune(t.Context(), time.Now().Add(-30*24*time.Hour), 500); n != 2 {
		t.Fatalf("pruned %d rows, want the 2 old events", n)
	}
}
