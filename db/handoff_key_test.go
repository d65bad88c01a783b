package db

import (
	"testing"
	"time"
)

// A keyed waiting acquire whose handed-over device fails its probe goes
// back to its place and gets a live device: never the dead lease replayed
// under its key (a 201 with released_at set).

func TestKeyedWaiterWhoseHandedDeviceFailsGetsALiveDevice(t *testing.T) {
	url := newDB(t)
	prober := &fakeProber{}
	cfg := testConfig(prober)
	cfg.ProbeOnHandoff = true
	a := newAllocator(t, url, cfg)
	mustCreate(t, a, "dead", "lab", "h:dead", nil)
	mustCreate(t, a, "good", "lab", "h:good", nil)
	h1 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	h2 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	byName := map[string]Lease{h1.Device.Name: h1, h2.Device.Name: h2}
	prober.setDead("h:dead", true)

	waiting := goAcquire(t.Context(), a, keyed("w", "k", "lab", 10*time.Second))
	awaitJoin(t, a, "w")
	if _, err := a.Release(t.Context(), byName["dead"].ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the dead device offline", func() bool { return mustDevice(t, a, "dead").State == StateOffline })
	// It keeps its place: after the failed probe it is back in line.
	awaitJoin(t, a, "w")
	if _, err := a.Release(t.Context(), byName["good"].ID); err != nil {
		t.Fatal(err)
	}
	r := <-waiting
	if r.err != nil || r.lease.Device.Name != "good" || !r.lease.Active() || r.replayed {
		t.Fatalf("waiter: %+v replayed=%v %v, want a live lease of the good device", r.lease, r.replayed, r.err)
	}
	// A later retry replays that live lease, never the dead one.
	again, replayed, err := a.AcquireOrReplay(t.Context(), keyed("w", "k", "lab", 0))
	if err != nil || !replayed || again.ID != r.lease.ID {
		t.Fatalf("retry: %+v replayed=%v %v, want the live lease %s", again, replayed, err, r.lease.ID)
	}
	var reason string
	var key, kept *string
	if err := a.pool.QueryRow(t.Context(), `SELECT end_reason, idempotency_key, given_up_idempotency_key
		FROM devalloc.leases WHERE device_name = 'dead' AND owner = 'w'`).Scan(&reason, &key, &kept); err != nil ||
		reason != EndProbeFailed || key != nil || kept == nil || *kept != "k" {
		t.Fatalf("the dead device's handed lease: ended %q, key %v, given up %v (%v); want probe_failed, no key, k kept for audit",
			reason, key, kept, err)
	}
	checkOneHolder(t, a)
	waitFlights(t, a)
}

// In a group handoff the key rides on the first lease; when another device
// of the group fails its probe, the keyed lease (whose device answered) is
// given back too, and must give its key up with it.
func TestKeyedGroupWhoseOtherDeviceFailsGetsALiveGroup(t *testing.T) {
	url := newDB(t)
	prober := &fakeProber{}
	cfg := testConfig(prober)
	cfg.ProbeOnHandoff = true
	a := newAllocator(t, url, cfg)
	byName := map[string]Lease{}
	for _, name := range []string{"good1", "dead", "good2"} {
		mustCreate(t, a, name, "lab", "h:"+name, nil)
	}
	for range 3 {
		l := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
		byName[l.Device.Name] = l
	}
	prober.setDead("h:dead", true)

	req := keyed("w", "k", "lab", 10*time.Second)
	req.Count = 2
	waiting := goAcquire(t.Context(), a, req)
	awaitJoin(t, a, "w")
	// good1 idle first: its lease is the group's first and carries the key.
	for _, name := range []string{"good1", "dead"} {
		if _, err := a.Release(t.Context(), byName[name].ID); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the dead device offline", func() bool { return mustDevice(t, a, "dead").State == StateOffline })
	awaitJoin(t, a, "w")
	if _, err := a.Release(t.Context(), byName["good2"].ID); err != nil {
		t.Fatal(err)
	}
	r := <-waiting
	if r.err != nil || !r.lease.Active() || len(r.lease.Group) != 2 || r.replayed {
		t.Fatalf("group: %+v replayed=%v %v, want a live group of two", r.lease, r.replayed, r.err)
	}
	for _, l := range r.lease.Group {
		if !l.Active() || l.Device.Name == "dead" {
			t.Fatalf("group member %s on %s (active %v), want live devices that answered", l.ID, l.Device.Name, l.Active())
		}
	}
	if n, _ := leaseRows(t, a, "w", "k"); n != 1 {
		t.Fatalf("%d leases carry the key, want 1", n)
	}
	checkOneHolder(t, a)
	waitFlights(t, a)
}
