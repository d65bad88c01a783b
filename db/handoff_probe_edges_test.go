package db

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
)

// Handoffs under probe, as the fourth review of issue 12 tried to break
// them; each test failed before its fix.

// pendingLeaseOf waits for the owner's pending handoff and returns its id.
func pendingLeaseOf(t *testing.T, a *Allocator, owner string) uuid.UUID {
	t.Helper()
	var id uuid.UUID
	waitFor(t, "a pending handoff", func() bool {
		err := a.pool.QueryRow(t.Context(), `SELECT id FROM devalloc.leases
			WHERE owner = $1 AND released_at IS NULL AND handoff_pending`, owner).Scan(&id)
		return err == nil
	})
	return id
}

// a renew of a lease still under its handoff probe is answered 200
// ("you have it until T"), yet the lease is nobody's answer and is taken
// back a moment later by a retry's take-back. The pending lease is listed
// (GET /v1/leases shows it, handoff_pending true), so its owner can know
// its id; RenewLease does not look at handoff_pending.
func TestRenewOfAPendingHandoffIsRefused(t *testing.T) {
	url := newDB(t)
	prober := newHeldProber()
	a := newAllocator(t, url, probedConfig(prober)) // probe timeout 10 s
	cfgB := testConfig(&fakeProber{})
	cfgB.ProbeTimeout = 200 * time.Millisecond // settle bound 1.4 s
	b := newAllocator(t, url, cfgB)
	mustCreate(t, a, "dev", "lab", "h:dev", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})

	original := goAcquire(t.Context(), a, keyed("w", "k", "lab", 20*time.Second))
	awaitJoin(t, a, "w")
	prober.hold("h:dev")
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	prober.awaitProbe(t, "h:dev")
	pending := pendingLeaseOf(t, a, "w")

	renewed, err := b.Renew(t.Context(), pending, time.Hour)
	t.Logf("renew of pending lease %s: active %v expires %v err=%v", pending, renewed.Active(), renewed.ExpiresAt, err)
	if err != nil {
		if !IsTransient(err) {
			t.Fatalf("renew of a pending handoff: %v; want a transient refusal (503, retry later)", err)
		}
		return // refused: nobody was told 200
	}
	// The client was told 200: it holds dev for an hour. A retry of the
	// keyed request (as its client would send) takes the handoff back.
	r, _, rerr := b.AcquireOrReplay(t.Context(), keyed("w", "k", "lab", 0))
	t.Logf("retry: lease %s on %q err=%v", r.ID, r.Device.Name, rerr)
	prober.let("h:dev", nil)
	o := <-original
	t.Logf("original: lease %s err=%v", o.lease.ID, o.err)
	var endReason *string
	if err := a.pool.QueryRow(t.Context(), `SELECT end_reason FROM devalloc.leases WHERE id = $1`, pending).Scan(&endReason); err != nil {
		t.Fatal(err)
	}
	if endReason != nil {
		t.Errorf("lease %s was renewed (200, expires %v) and then ended (%s) by the take-back: a renew's 200 taken back",
			pending, renewed.ExpiresAt.Format(time.TimeOnly), *endReason)
	}
	waitFlights(t, a)
	waitFlights(t, b)
}

// a handoff's TTL runs from the handoff, and the probe eats it:
// confirm_handoff confirms a lease whose expires_at has passed (it checks
// released_at only), and the waiter answers 201 with a lease that has
// already lapsed (a renew fails, the reaper takes it). The direct grant
// computes expires_at after its probe, so only the line does this.
func TestHandoffIsNeverAnsweredWithALapsedLease(t *testing.T) {
	url := newDB(t)
	cfg := testConfig(slowHealthyProber{1500 * time.Millisecond})
	cfg.ProbeOnHandoff = true
	cfg.ProbeTimeout = 2 * time.Second // the default
	a := newAllocator(t, url, cfg)
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "dev", "lab", "h:dev", nil)
	held := mustAcquire(t, b, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})

	req := AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", Wait: 20 * time.Second, TTL: time.Second}
	got := goAcquire(t.Context(), a, req)
	awaitJoin(t, a, "w")
	if _, err := b.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	r := <-got
	answered := time.Now()
	if r.err != nil {
		t.Fatalf("acquire: %v", r.err)
	}
	t.Logf("answered 201 at %v with lease %s expiring %v (ttl 1 s)", answered.Format("15:04:05.000"), r.lease.ID, r.lease.ExpiresAt.Format("15:04:05.000"))
	_, rerr := a.Renew(t.Context(), r.lease.ID, time.Hour)
	t.Logf("immediate renew: %v", rerr)
	if !r.lease.ExpiresAt.After(answered) {
		t.Errorf("the acquire answered 201 with lease %s that had lapsed %v before the answer (renew: %v)",
			r.lease.ID, answered.Sub(r.lease.ExpiresAt).Round(time.Millisecond), rerr)
	}
}

// an unkeyed waiter's client leaves while the handed device is under
// probe: the probe's context is the client's, so the probe "fails" with
// context.Canceled and probeHanded takes a healthy device offline
// (FailHandedLease) instead of giving it back to the line. The direct
// path (attempt) checks ctx.Err() before marking a device offline; the
// handoff path does not.
func TestClientLeavingDuringHandoffProbeKeepsTheDeviceOnline(t *testing.T) {
	url := newDB(t)
	prober := newHeldProber()
	a := newAllocator(t, url, probedConfig(prober))
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "dev", "lab", "h:dev", nil)
	held := mustAcquire(t, b, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	got := goAcquire(ctx, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", Wait: 20 * time.Second})
	awaitJoin(t, a, "w")
	prober.hold("h:dev")
	if _, err := b.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	prober.awaitProbe(t, "h:dev")
	cancel() // the client goes away mid-probe; the device is healthy
	r := <-got
	t.Logf("acquire: %v", r.err)
	d := mustDevice(t, a, "dev")
	t.Logf("device dev: state %s reason %q", d.State, d.StateReason)
	if d.State == "offline" {
		t.Errorf("a healthy device went offline (%q) because a waiter's client left during its handoff probe", d.StateReason)
	}
}

// the take-back of a group ends its leases in device-name order, and
// ending a lease that is not the group's keyed one fires
// pending_group_ends, which updates (locks) the keyed lease. The waiter's
// confirm_handoff locks the same leases in id order. Keyed lease with the
// smaller id, other lease first by name: confirm holds the keyed lease and
// waits for the other, the take-back holds the other and waits for the
// keyed one: a deadlock, one of them aborted after deadlock_timeout. The
// test plays confirm's first lock by hand, then the real confirm_handoff.
func TestTakeBackAndConfirmDoNotDeadlock(t *testing.T) {
	url := newDB(t)
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	cfgC := testConfig(&fakeProber{})
	cfgC.ProbeTimeout = 200 * time.Millisecond
	c := newAllocator(t, url, cfgC)
	req, lo, hi := pendingGroupKeyedOnItsFirstLock(t, b)
	tx, err := b.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(t.Context()))
	if _, err := tx.Exec(t.Context(), `SELECT 1 FROM devalloc.leases WHERE id = $1 FOR UPDATE`, lo); err != nil {
		t.Fatal(err)
	}
	rreq := req
	rreq.Wait = 5 * time.Second              // statement bound 5.5 s: past deadlock_timeout (1 s)
	retry := goAcquire(t.Context(), c, rreq) // settle bound 1.6 s, then the take-back
	waitFor(t, "the take-back blocked on the keyed lease", func() bool {
		var n int
		if err := b.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '%name: EndLease%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
	var confirmed bool
	cerr := tx.QueryRow(t.Context(), `SELECT devalloc.confirm_handoff(ARRAY[$1::uuid, $2::uuid])`, lo, hi).Scan(&confirmed)
	if cerr == nil {
		cerr = tx.Commit(t.Context())
	}
	t.Logf("confirm: %v err=%v", confirmed, cerr)
	r := <-retry
	t.Logf("retry: lease %s err=%v", r.lease.ID, r.err)
	if cerr != nil || r.err != nil {
		t.Errorf("take-back and confirm deadlocked: confirm err=%v, retry err=%v", cerr, r.err)
	}
	waitFlights(t, c)
}

// pendingGroupKeyedOnItsFirstLock gives "w" a keyed group of two (d1, d2)
// at b and makes it look handed to a waiter still probing, with the key on
// the lease of the smaller id (lo, which a confirm locks first) whose
// device sorts last (so a give-back in device-name order reaches it
// second): one group in four or so, with random ids, is like this.
func pendingGroupKeyedOnItsFirstLock(t *testing.T, b *Allocator) (req AcquireRequest, lo, hi uuid.UUID) {
	t.Helper()
	for _, name := range []string{"d1", "d2"} {
		mustCreate(t, b, name, "lab", "h:"+name, nil)
	}
	req = keyed("w", "k", "lab", 0)
	req.Count = 2
	req.TTL = time.Hour
	first, _, err := b.AcquireOrReplay(t.Context(), req)
	if err != nil || len(first.Group) != 2 {
		t.Fatalf("group: %v", err)
	}
	lo, hi = first.Group[0].ID, first.Group[1].ID
	if hi.String() < lo.String() {
		lo, hi = hi, lo
	}
	var key string
	var fingerprint []byte
	if err := b.pool.QueryRow(t.Context(), `SELECT idempotency_key, request_fingerprint FROM devalloc.leases
		WHERE owner = 'w' AND idempotency_key IS NOT NULL`).Scan(&key, &fingerprint); err != nil {
		t.Fatal(err)
	}
	// Two statements: the key is unique per owner, checked row by row.
	if _, err := b.pool.Exec(t.Context(), `UPDATE devalloc.leases SET handoff_pending = true, idempotency_key = NULL,
		request_fingerprint = NULL WHERE owner = 'w'`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(t.Context(), `UPDATE devalloc.leases SET idempotency_key = $2, request_fingerprint = $3,
		device_name = 'zz' WHERE id = $1`, lo, key, fingerprint); err != nil {
		t.Fatal(err)
	}
	return req, lo, hi
}

// The tenth read (migrations/00020): confirm_handoff_until took its "now"
// before it locked the leases, so a confirm that waited on a lease's row
// lock longer than the TTL wrote an expires_at already past, and the waiter
// answered 201 with a lapsed lease (what 00020 meant to end). Now the TTL
// starts once the leases are locked (migrations/00023).
func TestConfirmWaitingOnALockStartsTheTTLAfterIt(t *testing.T) {
	f := newUnderProbe(t, t.Context(), time.Second, nil)
	b, prober, got, pending := f.b, f.prober, f.got, f.pending

	// Someone holds the lease's row (an admin statement, a DBA) for longer
	// than the TTL; the confirm queues behind it.
	tx, err := b.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(t.Context()))
	if _, err := tx.Exec(t.Context(), `SELECT 1 FROM devalloc.leases WHERE id = $1 FOR UPDATE`, pending); err != nil {
		t.Fatal(err)
	}
	prober.let("h:dev", nil)
	waitFor(t, "the confirm blocked on the lease", func() bool {
		var n int
		if err := b.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '%confirm_handoff_until%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
	time.Sleep(1500 * time.Millisecond) // the lock outlasts the 1 s TTL
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	unlocked := time.Now()
	r := <-got
	if r.err != nil {
		t.Fatalf("acquire: %v", r.err)
	}
	if !r.lease.ExpiresAt.After(unlocked) {
		t.Errorf("201 with lease %s expiring %v, %v before the lock it waited on was let go: its 1 s TTL ran during the wait",
			r.lease.ID, r.lease.ExpiresAt.Format(time.TimeOnly), unlocked.Sub(r.lease.ExpiresAt).Round(time.Millisecond))
	}
}

// underProbe is the set-up of a handoff held under its waiter's probe:
// device dev, leased by "holder" at b, is released there and handed to the
// request of "w" waiting at a (ProbeOnHandoff, probe timeout 10 s), whose
// probe of it is held until the test lets it go (prober.let).
type underProbe struct {
	url     string
	a, b    *Allocator
	prober  *heldProber
	got     <-chan result
	pending uuid.UUID // the lease handed over, still pending
}

// newUnderProbe builds it: the request runs on ctx with ttl; other, when
// given, makes b (the holder's instance) on the test's database.
func newUnderProbe(t *testing.T, ctx context.Context, ttl time.Duration, other func(url string) *Allocator) *underProbe {
	t.Helper()
	f := &underProbe{url: newDB(t), prober: newHeldProber()}
	f.a = newAllocator(t, f.url, probedConfig(f.prober))
	if other != nil {
		f.b = other(f.url)
	} else {
		f.b = newAllocator(t, f.url, testConfig(&fakeProber{}))
	}
	mustCreate(t, f.a, "dev", "lab", "h:dev", nil)
	held := mustAcquire(t, f.b, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	f.prober.hold("h:dev")
	f.got = goAcquire(ctx, f.a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", Wait: 20 * time.Second, TTL: ttl})
	awaitJoin(t, f.a, "w")
	if _, err := f.b.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	f.prober.awaitProbe(t, "h:dev")
	f.pending = pendingLeaseOf(t, f.a, "w")
	return f
}
