package db

import (
	"testing"
	"time"
)

// A handoff's TTL starts at its confirm (migrations/00020), so a probe
// slower than the waiter's TTL must not lose the device: the reaper leaves
// a lease under its handoff probe alone while the probe may still confirm
// it. Before, the reaper ended it as expired mid-probe, the confirm found
// it ended and the waiter went back in line; with a TTL shorter than the
// probe that repeats forever.
func TestReaperLeavesAHandoffUnderProbeToItsProbe(t *testing.T) {
	f := newUnderProbe(t, t.Context(), time.Second, nil)
	a, b, prober, got, pending := f.a, f.b, f.prober, f.got, f.pending
	// The probe has outlived the 1 s TTL it was handed with.
	if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.leases SET expires_at = now() - interval '1 ms' WHERE id = $1`, pending); err != nil {
		t.Fatal(err)
	}
	if n := b.reaper.pass(t.Context()); n != 0 {
		t.Errorf("a reaper pass during the handoff probe ended %d lease(s), want 0", n)
	}
	let := time.Now()
	prober.let("h:dev", nil)
	r := <-got
	if r.err != nil {
		t.Fatalf("acquire: %v", r.err)
	}
	// Its TTL (1 s) started over at the confirm, after the probe was let
	// go (not compared with now: a loaded machine may take a second to
	// answer).
	if r.lease.ID != pending || !r.lease.Active() || !r.lease.ExpiresAt.After(let) {
		t.Errorf("answered lease %s (active %v, expires %v), want the handed lease %s, live",
			r.lease.ID, r.lease.Active(), r.lease.ExpiresAt, pending)
	}
}

// A handoff whose probe can no longer confirm it (its instance died during
// the probe) is still reaped, at its expiry once the settle bound has passed
// since the handoff: no device stays pending forever, nor much past its TTL.
func TestReaperEndsAHandoffNobodyConfirms(t *testing.T) {
	url := newDB(t)
	cfg := testConfig(&fakeProber{})
	cfg.ProbeTimeout = time.Second
	a := newAllocator(t, url, cfg)
	mustCreate(t, a, "solo", "lab", "h:solo", nil)
	mustCreate(t, a, "g1", "pair", "h:g1", nil)
	mustCreate(t, a, "g2", "pair", "h:g2", nil)
	solo := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", TTL: time.Hour})
	group := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "pair"}, Owner: "w", Count: 2, TTL: time.Hour})
	// Handed over ago, expired a moment ago.
	lapse := func(id any, ago time.Duration) {
		t.Helper()
		if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.leases SET handoff_pending = true,
			acquired_at = now() - make_interval(secs => $2), expires_at = now() - interval '1 ms'
			WHERE id = $1 OR group_id = $1`, id, ago.Seconds()); err != nil {
			t.Fatal(err)
		}
	}
	// Settle bounds: (1+1)×1 s + 1 s = 3 s for the lone lease, (2+1)×1 s +
	// 1 s = 4 s for the pair.
	lapse(solo.ID, 2*time.Second)
	lapse(*group.GroupID, 3500*time.Millisecond)
	if n := a.reaper.pass(t.Context()); n != 0 {
		t.Errorf("reaped %d pending lease(s) within their settle bound, want 0", n)
	}
	lapse(solo.ID, 3500*time.Millisecond)
	lapse(*group.GroupID, 5*time.Second)
	if n := a.reaper.pass(t.Context()); n != 3 {
		t.Errorf("reaped %d pending lease(s) past their settle bound, want 3", n)
	}
	var leased int
	if err := a.pool.QueryRow(t.Context(), `SELECT count(*) FROM devalloc.devices WHERE state <> 'idle'`).Scan(&leased); err != nil {
		t.Fatal(err)
	}
	if leased != 0 {
		t.Errorf("%d device(s) not idle after their pending handoffs were reaped", leased)
	}
}

// the settle bound is computed from the REAPER's ProbeTimeout, not
// the probing instance's. a probes handoffs with a 10 s ProbeTimeout
// (settle bound 21 s for one device); b, another instance (say without
// ProbeOnHandoff, where ProbeTimeout only bounds its health probes), uses
// 100 ms: its reaper ends a's handoff 1.2 s past expiry while a's probe is
// well within its bound. With a TTL shorter than the probe, the handoff
// loops as before 2a1196e.
func TestReaperLeavesAnotherInstancesHandoffToItsProbeTimeout(t *testing.T) {
	f := newUnderProbe(t, t.Context(), time.Second, func(url string) *Allocator {
		cfg := testConfig(&fakeProber{})
		cfg.ProbeTimeout = 100 * time.Millisecond
		return newAllocator(t, url, cfg)
	})
	a, b, prober, got, pending := f.a, f.b, f.prober, f.got, f.pending
	// a's probe has run 3 s (of its 10 s ProbeTimeout), 2 s past the TTL.
	if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.leases SET expires_at = now() - interval '2 s' WHERE id = $1`, pending); err != nil {
		t.Fatal(err)
	}
	if n := b.reaper.pass(t.Context()); n != 0 {
		t.Errorf("b's reaper ended %d lease(s) under a's handoff probe, 2 s past expiry, within a's settle bound (21 s): it used its own ProbeTimeout (100 ms)", n)
	}
	prober.let("h:dev", nil)
	select {
	case r := <-got:
		t.Logf("acquire: lease %s err=%v (handed %s)", r.lease.ID, r.err, pending)
	case <-time.After(2 * time.Second):
		t.Logf("acquire: no answer 2 s after the probe passed (back in line, probing the device again)")
	}
}
