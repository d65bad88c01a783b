package db

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db/probe"
)

// A device handed from the line to a keyed waiter whose instance probes it
// first (ProbeOnHandoff) is not the client's until the probe passed. A
// retry of the same request meanwhile must not be answered with that lease
// (a 201 for a device taken back a moment later): it waits for the probe's
// outcome and answers with the lease that is confirmed, or goes on without
// one (issue 12, finding H2).

// heldProber is a fakeProber whose probes of held addresses block until the
// test lets them go (with the outcome it chose), so a retry can be issued
// while the handed device is under probe.
type heldProber struct {
	fakeProber
	mu      sync.Mutex
	held    map[string]chan error // probes to hold, taken by the probe
	gates   map[string]chan error // how let reaches a held probe
	entered chan string
}

func newHeldProber() *heldProber {
	return &heldProber{held: map[string]chan error{}, gates: map[string]chan error{}, entered: make(chan string, 16)}
}

// hold makes the next probe of address block until let is called.
func (p *heldProber) hold(address string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ch := make(chan error, 1)
	p.held[address], p.gates[address] = ch, ch
}

// let ends the held probe of address with err (nil: it answers).
func (p *heldProber) let(address string, err error) {
	p.mu.Lock()
	ch := p.gates[address]
	p.mu.Unlock()
	ch <- err
}

func (p *heldProber) Probe(ctx context.Context, kind probe.Kind, address string) error {
	p.mu.Lock()
	ch, ok := p.held[address]
	if ok {
		delete(p.held, address) // only the next probe is held
	}
	p.mu.Unlock()
	if !ok {
		return p.fakeProber.Probe(ctx, kind, address)
	}
	p.entered <- address
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// awaitProbe waits until the probe of address is held.
func (p *heldProber) awaitProbe(t *testing.T, address string) {
	t.Helper()
	select {
	case got := <-p.entered:
		if got != address {
			t.Fatalf("probe of %s held, want %s", got, address)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for the probe of %s", address)
	}
}

// probedConfig probes handed devices, with room for a held probe.
func probedConfig(p probe.Prober) Config {
	cfg := testConfig(p)
	cfg.ProbeOnHandoff = true
	cfg.ProbeTimeout = 10 * time.Second
	return cfg
}

// notYet fails the test if the retry was answered already.
func notYet(t *testing.T, retry <-chan result, while string) {
	t.Helper()
	select {
	case r := <-retry:
		t.Fatalf("retry answered %s: lease %s on %s (active %v, pending probe) replayed=%v err=%v; want no answer yet",
			while, r.lease.ID, r.lease.Device.Name, r.lease.Active(), r.replayed, r.err)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestRetryDuringHandoffProbeIsNotAnsweredWithTheHandedLease(t *testing.T) {
	url := newDB(t)
	prober := newHeldProber()
	a := newAllocator(t, url, probedConfig(prober))
	mustCreate(t, a, "flaky", "lab", "h:flaky", nil)
	mustCreate(t, a, "good", "lab", "h:good", nil)
	byName := map[string]Lease{}
	for range 2 {
		l := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
		byName[l.Device.Name] = l
	}

	waiting := goAcquire(t.Context(), a, keyed("w", "k", "lab", 20*time.Second))
	awaitJoin(t, a, "w")
	prober.hold("h:flaky")
	if _, err := a.Release(t.Context(), byName["flaky"].ID); err != nil {
		t.Fatal(err)
	}
	prober.awaitProbe(t, "h:flaky")
	// The client's connection dropped; it retries while the probe runs.
	retry := goAcquire(t.Context(), a, keyed("w", "k", "lab", 20*time.Second))
	notYet(t, retry, "while the handed device was under probe")
	prober.let("h:flaky", fmt.Errorf("connection refused"))
	waitFor(t, "the flaky device offline", func() bool { return mustDevice(t, a, "flaky").State == StateOffline })
	awaitJoin(t, a, "w")
	if _, err := a.Release(t.Context(), byName["good"].ID); err != nil {
		t.Fatal(err)
	}
	w, r := <-waiting, <-retry
	if w.err != nil || w.lease.Device.Name != "good" || !w.lease.Active() {
		t.Fatalf("waiter: %+v %v, want a live lease of the good device", w.lease, w.err)
	}
	if r.err != nil || r.lease.ID != w.lease.ID {
		t.Fatalf("retry: lease %s on %s (active %v) replayed=%v err=%v; want the waiter's live lease %s",
			r.lease.ID, r.lease.Device.Name, r.lease.Active(), r.replayed, r.err, w.lease.ID)
	}
	if now, err := a.GetLease(t.Context(), r.lease.ID); err != nil || !now.Active() {
		t.Fatalf("the retry's lease %s: active %v (%v), want active", r.lease.ID, now.Active(), err)
	}
	checkOneHolder(t, a)
	waitFlights(t, a)
}

func TestRetryDuringHandoffProbeIsNotAnsweredWithTheHandedGroup(t *testing.T) {
	url := newDB(t)
	prober := newHeldProber()
	a := newAllocator(t, url, probedConfig(prober))
	byName := map[string]Lease{}
	for _, name := range []string{"good1", "flaky", "good2"} {
		mustCreate(t, a, name, "lab", "h:"+name, nil)
	}
	for range 3 {
		l := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
		byName[l.Device.Name] = l
	}

	req := keyed("w", "k", "lab", 20*time.Second)
	req.Count = 2
	waiting := goAcquire(t.Context(), a, req)
	awaitJoin(t, a, "w")
	prober.hold("h:flaky")
	// good1 idle first: its lease is the group's first and carries the key.
	for _, name := range []string{"good1", "flaky"} {
		if _, err := a.Release(t.Context(), byName[name].ID); err != nil {
			t.Fatal(err)
		}
	}
	prober.awaitProbe(t, "h:flaky")
	retry := goAcquire(t.Context(), a, req)
	notYet(t, retry, "while a device of the handed group was under probe")
	prober.let("h:flaky", fmt.Errorf("connection refused"))
	waitFor(t, "the flaky device offline", func() bool { return mustDevice(t, a, "flaky").State == StateOffline })
	awaitJoin(t, a, "w")
	if _, err := a.Release(t.Context(), byName["good2"].ID); err != nil {
		t.Fatal(err)
	}
	w, r := <-waiting, <-retry
	if w.err != nil || len(w.lease.Group) != 2 {
		t.Fatalf("group: %+v %v, want a live group of two", w.lease, w.err)
	}
	if r.err != nil || r.lease.ID != w.lease.ID || len(r.lease.Group) != 2 {
		t.Fatalf("retry: lease %s (group of %d) replayed=%v err=%v; want the waiter's live group %s",
			r.lease.ID, len(r.lease.Group), r.replayed, r.err, w.lease.ID)
	}
	for _, l := range r.lease.Group {
		now, err := a.GetLease(t.Context(), l.ID)
		if err != nil || !now.Active() || l.Device.Name == "flaky" {
			t.Fatalf("retry's group member %s on %s: active %v (%v), want live devices that answered", l.ID, l.Device.Name, now.Active(), err)
		}
	}
	checkOneHolder(t, a)
	waitFlights(t, a)
}

// A handoff revoked (or otherwise ended) while its probe runs is no answer
// once the probe passes: neither the waiter's (which goes back in line)
// nor a retry's.
func TestHandoffRevokedDuringItsProbeIsNeverTheAnswer(t *testing.T) {
	url := newDB(t)
	prober := newHeldProber()
	a := newAllocator(t, url, probedConfig(prober))
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "dev", "lab", "h:dev", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})

	waiting := goAcquire(t.Context(), a, keyed("w", "k", "lab", 20*time.Second))
	awaitJoin(t, a, "w")
	prober.hold("h:dev")
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	prober.awaitProbe(t, "h:dev")
	var handed Lease
	waitFor(t, "the handed lease", func() bool {
		ls, err := a.ListLeases(t.Context(), LeaseFilter{Owner: "w", ActiveOnly: true})
		if err != nil || len(ls) != 1 {
			return false
		}
		handed = ls[0]
		return true
	})
	if _, err := a.Revoke(t.Context(), handed.ID); err != nil {
		t.Fatal(err)
	}
	// A retry at another instance, not waiting: the revoked handoff is no
	// answer for it.
	r, replayed, err := b.AcquireOrReplay(t.Context(), keyed("w", "k", "lab", 0))
	if err == nil && r.ID == handed.ID {
		t.Fatalf("retry answered with the handoff revoked under probe: lease %s active %v replayed=%v", r.ID, r.Active(), replayed)
	}
	prober.let("h:dev", nil)
	w := <-waiting
	if w.err != nil || w.lease.ID == handed.ID || !w.lease.Active() {
		t.Fatalf("waiter: lease %s (active %v) %v; want a live lease, never the revoked handoff %s", w.lease.ID, w.lease.Active(), w.err, handed.ID)
	}
	if err == nil && r.ID != w.lease.ID {
		t.Fatalf("retry got lease %s, the waiter %s: two answers for one key", r.ID, w.lease.ID)
	}
	if now, gerr := a.GetLease(t.Context(), w.lease.ID); gerr != nil || !now.Active() {
		t.Fatalf("the waiter's lease %s: active %v (%v), want active", w.lease.ID, now.Active(), gerr)
	}
	checkOneHolder(t, a)
	waitFlights(t, a)
	waitFlights(t, b)
}

// A pending handoff that ends before its probe settles (the reaper ends it
// past its settle bound while its waiter's instance is stuck) is never replayed: a
// retry gets a lease of its own.
func TestPendingLeaseThatEndsUnsettledIsNeverReplayed(t *testing.T) {
	url := newDB(t)
	prober := newHeldProber()
	a := newAllocator(t, url, probedConfig(prober))
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "dev", "lab", "h:dev", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})

	req := keyed("w", "k", "lab", 20*time.Second)
	req.TTL = time.Second
	waiting := goAcquire(t.Context(), a, req)
	awaitJoin(t, a, "w")
	prober.hold("h:dev")
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	prober.awaitProbe(t, "h:dev")
	var handed Lease
	waitFor(t, "the handed lease", func() bool {
		ls, err := a.ListLeases(t.Context(), LeaseFilter{Owner: "w", ActiveOnly: true})
		if err != nil || len(ls) != 1 {
			return false
		}
		handed = ls[0]
		return true
	})
	// Expired, and stuck past its settle bound ((1 + 1) × the longest probe
	// timeout, a's 10 s, + 1 s) since the handoff: the reaper ends it.
	if _, err := b.pool.Exec(t.Context(), `UPDATE devalloc.leases SET acquired_at = now() - interval '30 s',
		expires_at = now() - interval '1 ms' WHERE id = $1`, handed.ID); err != nil {
		t.Fatal(err)
	}
	if n := b.reaper.pass(t.Context()); n != 1 {
		t.Fatalf("reaped %d leases, want the pending one", n)
	}
	retry := req
	retry.Wait = 0
	r, replayed, err := b.AcquireOrReplay(t.Context(), retry)
	if err != nil || r.ID == handed.ID || !r.Active() {
		t.Fatalf("retry: lease %s (active %v) replayed=%v err=%v; want a live lease of its own, never the handoff %s that ended unconfirmed",
			r.ID, r.Active(), replayed, err, handed.ID)
	}
	prober.let("h:dev", nil)
	w := <-waiting
	if w.err != nil || w.lease.ID != r.ID {
		t.Fatalf("waiter: lease %s (active %v) %v; want the retry's lease %s", w.lease.ID, w.lease.Active(), w.err, r.ID)
	}
	checkOneHolder(t, a)
	waitFlights(t, a)
	waitFlights(t, b)
}

// unsettledHandoff is an allocator (probe timeout 200 ms, so a settle
// bound of 1.4 s) and a keyed lease of its device "dev" made pending, as a
// handoff to a waiter whose instance died before its probe ended; req is
// the request, whose retry meets it.
func unsettledHandoff(t *testing.T) (*Allocator, AcquireRequest, Lease) {
	t.Helper()
	url := newDB(t)
	cfg := testConfig(&fakeProber{})
	cfg.ProbeTimeout = 200 * time.Millisecond
	a := newAllocator(t, url, cfg)
	mustCreate(t, a, "dev", "lab", "h:dev", nil)
	req := keyed("w", "k", "lab", 0)
	req.TTL = time.Hour
	first, _, err := a.AcquireOrReplay(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.leases SET handoff_pending = true WHERE id = $1`, first.ID); err != nil {
		t.Fatal(err)
	}
	return a, req, first
}

// A handoff whose waiter's instance died (or hangs) before its probe
// settled would hold its key, and every retry would wait and be told 503,
// until the lease's TTL. Past the settle bound the retry takes the handoff
// back (only while it is still pending: a confirm that beats it makes it
// the answer), the key goes with it, and the retry acquires afresh.
func TestRetryTakesBackAHandoffThatNeverSettles(t *testing.T) {
	a, req, first := unsettledHandoff(t)
	start := time.Now()
	r, replayed, err := a.AcquireOrReplay(t.Context(), req)
	took := time.Since(start)
	if err != nil || r.ID == first.ID || !r.Active() || replayed {
		t.Fatalf("retry of a handoff that never settled: lease %s (active %v) replayed=%v err=%v; want a new live lease, not a 503 until its TTL",
			r.ID, r.Active(), replayed, err)
	}
	if bound := a.handoffSettleBound(1); took < bound || took > bound+time.Second {
		t.Fatalf("retry took %v, want about the settle bound %v", took, bound)
	}
	var ended bool
	var key *string
	if err := a.pool.QueryRow(t.Context(), `SELECT released_at IS NOT NULL, idempotency_key FROM devalloc.leases WHERE id = $1`, first.ID).
		Scan(&ended, &key); err != nil {
		t.Fatal(err)
	}
	if !ended || key != nil {
		t.Fatalf("the unsettled handoff: ended %v, key %v; want it ended with its key given up", ended, key)
	}
	checkOneHolder(t, a)
	waitFlights(t, a)
}

// A confirm that commits while a retry takes an unsettled handoff back
// wins: the lease is the answer, in force.
func TestConfirmBeatingTheTakeBackIsTheAnswer(t *testing.T) {
	a, req, first := unsettledHandoff(t)
	// The waiter's confirm holds the lease's row locked as the retry's
	// take-back reaches it, then commits.
	tx, err := a.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(t.Context()))
	var ok bool
	if err := tx.QueryRow(t.Context(), `SELECT devalloc.confirm_handoff_until(ARRAY[$1::uuid]) IS NOT NULL`, first.ID).Scan(&ok); err != nil || !ok {
		t.Fatalf("confirm: %v %v", ok, err)
	}
	retry := goAcquire(t.Context(), a, req)
	waitFor(t, "the take-back waiting on the confirm's row lock", func() bool {
		var n int
		if err := a.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	r := <-retry
	if r.err != nil || r.lease.ID != first.ID || !r.lease.Active() || !r.replayed {
		t.Fatalf("retry: lease %s (active %v) replayed=%v err=%v; want the confirmed lease %s, replayed", r.lease.ID, r.lease.Active(), r.replayed, r.err, first.ID)
	}
	checkOneHolder(t, a)
	waitFlights(t, a)
}

// A keyed row left in line by a request that was already answered (it
// could not leave the line) is handed a device pending a probe that nobody
// will run: the re-check gives it back (its key with it), so a retry is not
// left waiting on it, and acquires afresh.
func TestStrandedKeyedWaitersPendingHandoffIsGivenBack(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, probedConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	req := keyed("w", "k", "lab", 0)
	req.TTL = time.Minute
	req.fingerprint = req.fingerprintOf()
	id := uuid.Must(uuid.NewV7())
	if _, _, err := a.enqueue(t.Context(), req, id, nil, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	a.stranded.add(id, true)
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	var handed uuid.UUID
	var pending bool
	if err := a.pool.QueryRow(t.Context(), `SELECT id, handoff_pending FROM devalloc.leases WHERE waiter_id = $1 AND released_at IS NULL`,
		id).Scan(&handed, &pending); err != nil || !pending {
		t.Fatalf("the lease handed to the stranded row: pending %v (%v), want pending", pending, err)
	}
	a.rechecker.pass(t.Context())
	if l, err := a.GetLease(t.Context(), handed); err != nil || l.Active() {
		t.Fatalf("the stranded row's pending lease: active %v (%v), want given back", l.Active(), err)
	}
	r, replayed, err := a.AcquireOrReplay(t.Context(), req)
	if err != nil || r.ID == handed || !r.Active() || replayed {
		t.Fatalf("retry: lease %s (active %v) replayed=%v err=%v; want a new live lease", r.ID, r.Active(), replayed, err)
	}
	checkOneHolder(t, a)
	waitFlights(t, a)
}

// A keyed group is answered with the lease that carries its key, the one a
// retry's replay finds: the same lease id both times, whichever device's
// lease the key landed on (here the one whose device sorts last).
func TestKeyedGroupIsAnsweredWithTheLeaseItsRetryReplays(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, probedConfig(&fakeProber{}))
	byName := map[string]Lease{}
	for _, name := range []string{"a1", "b2"} {
		mustCreate(t, a, name, "lab", "h:"+name, nil)
		l := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
		byName[l.Device.Name] = l
	}
	req := keyed("w", "k", "lab", 20*time.Second)
	req.Count = 2
	waiting := goAcquire(t.Context(), a, req)
	awaitJoin(t, a, "w")
	for _, name := range []string{"b2", "a1"} { // b2 idle first: its lease is granted first
		if _, err := a.Release(t.Context(), byName[name].ID); err != nil {
			t.Fatal(err)
		}
	}
	w := <-waiting
	if w.err != nil || len(w.lease.Group) != 2 {
		t.Fatalf("group: %+v %v", w.lease, w.err)
	}
	r, replayed, err := a.AcquireOrReplay(t.Context(), req)
	if err != nil || !replayed || r.ID != w.lease.ID || len(r.Group) != 2 {
		t.Fatalf("retry: lease %s on %s (group of %d) replayed=%v err=%v; want the answer's lease %s on %s",
			r.ID, r.Device.Name, len(r.Group), replayed, err, w.lease.ID, w.lease.Device.Name)
	}
	waitFlights(t, a)
}
