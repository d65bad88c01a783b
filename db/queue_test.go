package db

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
)

// Waiters arriving in a known order on alternating instances are served
// in exactly that order, whichever instance releases: the line is one
// across instances. Each release is by a random instance, and the next
// waiter must be the one holding the device afterwards.
func TestLineServesInArrivalOrderAcrossInstances(t *testing.T) {
	url := newDB(t)
	insts := []*Allocator{
		newAllocator(t, url, testConfig(&fakeProber{})),
		newAllocator(t, url, testConfig(&fakeProber{})),
		newAllocator(t, url, testConfig(&fakeProber{})),
	}
	mustCreate(t, insts[0], "d1", "lab", "h:1", nil)
	held := mustAcquire(t, insts[0], AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "first"})

	const waiters = 12
	results := make([]<-chan result, waiters)
	for i := range waiters {
		req := AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 30 * time.Second, Owner: fmt.Sprintf("w%02d", i)}
		results[i] = goAcquire(t.Context(), insts[i%3], req)
		waitFor(t, fmt.Sprintf("waiter %d in line", i), func() bool { return queueLength(t, insts[0], "lab") == i+1 })
	}
	rng := rand.New(rand.NewPCG(7, uint64(time.Now().UnixNano())))
	overtakes := 0
	for i := range waiters {
		if _, err := insts[rng.IntN(3)].Release(t.Context(), held.ID); err != nil {
			t.Fatal(err)
		}
		// Whoever got the device now must be waiter i.
		r := <-results[i]
		if r.err != nil {
			t.Fatalf("waiter %d: %v", i, r.err)
		}
		if want := fmt.Sprintf("w%02d", i); r.lease.Owner != want {
			overtakes++
			t.Errorf("release %d went to %s, want %s", i, r.lease.Owner, want)
		}
		held = r.lease
	}
	if overtakes > 0 {
		t.Fatalf("%d overtakes in %d handoffs", overtakes, waiters)
	}
	if n := queueLength(t, insts[0], "lab"); n != 0 {
		t.Fatalf("%d waiters left in line", n)
	}
}

// A higher priority is served first; and a waiter that has waited long
// enough ranks above a newer request of higher priority (aging), so low
// priority never starves.
func TestPriorityWithAging(t *testing.T) {
	url := newDB(t)
	cfg := testConfig(&fakeProber{})
	cfg.PriorityAging = 50 * time.Millisecond
	a := newAllocator(t, url, cfg)
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	lab := Selector{Pool: "lab"}

	low := goAcquire(t.Context(), a, AcquireRequest{Selector: lab, Wait: 30 * time.Second, Owner: "low"})
	waitFor(t, "low in line", func() bool { return queueLength(t, a, "lab") == 1 })
	high := goAcquire(t.Context(), a, AcquireRequest{Selector: lab, Wait: 30 * time.Second, Owner: "high", Priority: 5})
	waitFor(t, "high in line", func() bool { return queueLength(t, a, "lab") == 2 })
	if q := mustQueue(t, a, "lab"); q[0].Owner != "high" || q[1].Owner != "low" {
		t.Fatalf("line %+v, want high before low", q)
	}
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	r := <-high
	if r.err != nil {
		t.Fatal(r.err)
	}

	// low has waited since before high came; wait until it has waited more
	// than 5 levels' worth, then a new priority-5 request ranks behind it.
	waitFor(t, "low to age past priority 5", func() bool {
		q := mustQueue(t, a, "lab")
		return len(q) == 1 && time.Since(q[0].EnqueuedAt) > 8*cfg.PriorityAging
	})
	late := goAcquire(t.Context(), a, AcquireRequest{Selector: lab, Wait: 30 * time.Second, Owner: "late-high", Priority: 5})
	waitFor(t, "late-high in line", func() bool { return queueLength(t, a, "lab") == 2 })
	if q := mustQueue(t, a, "lab"); q[0].Owner != "low" {
		t.Fatalf("line %+v, want the aged low first", q)
	}
	if _, err := a.Release(t.Context(), r.lease.ID); err != nil {
		t.Fatal(err)
	}
	if r := <-low; r.err != nil || r.lease.Owner != "low" {
		t.Fatalf("low: %+v %v", r.lease, r.err)
	}
	cancelLine(t, a, late)
}

// Under sustained load from higher priorities (a steady stream of
// priority-3 requests keeping the line full), a priority-0 request is
// still served: aging lifts it above every request that came after it
// had waited 3 x PriorityAging.
func TestLowPriorityIsNotStarvedUnderSustainedLoad(t *testing.T) {
	url := newDB(t)
	cfg := testConfig(&fakeProber{})
	cfg.PriorityAging = 40 * time.Millisecond
	insts := []*Allocator{newAllocator(t, url, cfg), newAllocator(t, url, cfg)}
	mustCreateProbed(t, insts[0], "d1", "lab", "h:1", "none", nil)
	lab := Selector{Pool: "lab"}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var highServed atomic.Int64
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				l, err := insts[i%2].Acquire(ctx, AcquireRequest{Selector: lab, Wait: 10 * time.Second, Owner: "high", Priority: 3})
				if err != nil {
					continue
				}
				highServed.Add(1)
				time.Sleep(5 * time.Millisecond)
				_, _ = insts[i%2].Release(context.WithoutCancel(ctx), l.ID)
			}
		})
	}
	waitFor(t, "the high stream to run", func() bool { return highServed.Load() > 10 })
	low := goAcquire(ctx, insts[1], AcquireRequest{Selector: lab, Wait: 20 * time.Second, Owner: "low"})
	r := <-low
	cancel()
	wg.Wait()
	if r.err != nil {
		t.Fatalf("low priority starved: %v (%d high-priority grants meanwhile)", r.err, highServed.Load())
	}
	t.Logf("low served among %d high-priority grants", highServed.Load())
	if _, err := insts[1].Release(t.Context(), r.lease.ID); err != nil {
		t.Fatal(err)
	}
}

// A group acquire leases count devices at once, or none; the group comes
// back whole and is released in one call.
func TestGroupAcquireAllOrNothing(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	for i := range 3 {
		mustCreateProbed(t, a, fmt.Sprintf("d%d", i), "lab", "h:1", "none", nil)
	}
	lab := Selector{Pool: "lab"}
	if _, err := a.Acquire(t.Context(), AcquireRequest{Selector: lab, Count: 4, Owner: "g"}); !errors.Is(err, ErrUnsatisfiable) {
		t.Fatalf("count 4 of 3 devices: %v, want ErrUnsatisfiable", err)
	}
	one := mustAcquire(t, a, AcquireRequest{Selector: lab, Owner: "single"})
	if _, err := a.Acquire(t.Context(), AcquireRequest{Selector: lab, Count: 3, Owner: "g"}); !errors.Is(err, ErrNoDevice) {
		t.Fatalf("count 3 with 2 idle and no wait: %v, want ErrNoDevice", err)
	}
	if d := mustDevice(t, a, "d1"); d.State != StateIdle {
		t.Fatalf("a failed group left %s %s", d.Name, d.State)
	}
	waiting := goAcquire(t.Context(), a, AcquireRequest{Selector: lab, Count: 3, Owner: "g", Wait: 10 * time.Second})
	awaitJoin(t, a, "g")
	// A single request behind the group does not take the idle devices
	// the group is waiting to complete.
	if _, err := a.Acquire(t.Context(), AcquireRequest{Selector: lab, Owner: "single2"}); !errors.Is(err, ErrNoDevice) {
		t.Fatalf("a single behind the waiting group: %v, want ErrNoDevice", err)
	}
	if _, err := a.Release(t.Context(), one.ID); err != nil {
		t.Fatal(err)
	}
	r := <-waiting
	if r.err != nil {
		t.Fatal(r.err)
	}
	if len(r.lease.Group) != 3 || r.lease.GroupID == nil {
		t.Fatalf("group answer %+v, want 3 leases with a group id", r.lease)
	}
	names := map[string]bool{}
	for _, l := range r.lease.Group {
		if l.GroupID == nil || *l.GroupID != *r.lease.GroupID || l.Owner != "g" {
			t.Fatalf("member %+v not of group %s", l, r.lease.GroupID)
		}
		names[l.Device.Name] = true
	}
	if len(names) != 3 {
		t.Fatalf("group devices %v, want 3 distinct", names)
	}
	ended, err := a.EndGroup(t.Context(), *r.lease.GroupID, EndReleased)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ended {
		if l.Active() || l.EndReason != EndReleased {
			t.Fatalf("after EndGroup: %+v", l)
		}
	}
	for i := range 3 {
		if d := mustDevice(t, a, fmt.Sprintf("d%d", i)); d.State != StateIdle {
			t.Fatalf("%s is %s after the group's release", d.Name, d.State)
		}
	}
}

// Groups competing for the same devices across instances never deadlock
// and never hold part of a group: every grant is whole, no device has two
// holders, and the farm keeps moving.
func TestCompetingGroupsNeverDeadlock(t *testing.T) {
	url := newDB(t)
	insts := []*Allocator{
		newAllocator(t, url, testConfig(&fakeProber{})),
		newAllocator(t, url, testConfig(&fakeProber{})),
		newAllocator(t, url, testConfig(&fakeProber{})),
	}
	const devices = 7
	for i := range devices {
		mustCreateProbed(t, insts[0], fmt.Sprintf("d%d", i), "lab", "h:1", "none", nil)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Second)
	defer cancel()
	var mu sync.Mutex
	holder := map[string]string{} // device → client holding it now
	var grants, singles atomic.Int64
	var wg sync.WaitGroup
	fail := func(format string, args ...any) {
		t.Errorf(format, args...)
		cancel()
	}
	for c := range 9 {
		wg.Go(func() {
			count := 2 + c%3 // groups of 2, 3 and 4
			if c == 8 {
				count = 1 // and a single among them
			}
			me := fmt.Sprintf("c%d", c)
			inst := insts[c%3]
			for ctx.Err() == nil {
				l, err := inst.Acquire(ctx, AcquireRequest{Selector: Selector{Pool: "lab"}, Count: count, Wait: 3 * time.Second, Owner: me})
				if errors.Is(err, ErrNoDevice) || ctx.Err() != nil {
					continue
				}
				if err != nil {
					fail("%s: %v", me, err)
					return
				}
				members := []Lease{l}
				if count > 1 {
					members = l.Group
				}
				if len(members) != count {
					fail("%s asked for %d, got %d leases", me, count, len(members))
					return
				}
				mu.Lock()
				for _, m := range members {
					if h, ok := holder[m.Device.Name]; ok {
						mu.Unlock()
						fail("%s got %s while %s holds it", me, m.Device.Name, h)
						return
					}
					holder[m.Device.Name] = me
				}
				mu.Unlock()
				grants.Add(1)
				if count == 1 {
					singles.Add(1)
				}
				time.Sleep(time.Duration(2+c) * time.Millisecond)
				mu.Lock()
				for _, m := range members {
					delete(holder, m.Device.Name)
				}
				mu.Unlock()
				if count > 1 {
					_, err = inst.EndGroup(context.WithoutCancel(ctx), *l.GroupID, EndReleased)
				} else {
					_, err = inst.Release(context.WithoutCancel(ctx), l.ID)
				}
				if err != nil {
					fail("%s release: %v", me, err)
					return
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d grants (%d singles) in 4 s", grants.Load(), singles.Load())
	if grants.Load() < 20 {
		t.Fatalf("only %d grants: groups stalled", grants.Load())
	}
	waitFor(t, "the line to empty", func() bool { return queueLength(t, insts[0], "lab") == 0 })
	var active int
	if err := insts[0].pool.QueryRow(t.Context(), `SELECT count(*) FROM devalloc.leases WHERE released_at IS NULL`).Scan(&active); err != nil || active != 0 {
		t.Fatalf("%d leases still active (%v)", active, err)
	}
}

// The waiters of an instance that died (its listener session gone, so
// nobody holds its liveness lock) are never handed a device: a release
// skips them and serves the live waiter behind them, or leaves the device
// idle; and once the instance has been silent long enough its rows go.
func TestDeadInstanceWaitersAreNeverServed(t *testing.T) {
	url := newDB(t)
	cfg := testConfig(&fakeProber{})
	cfg.HeartbeatInterval = 50 * time.Millisecond
	a := newAllocator(t, url, cfg)
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	mustCreate(t, a, "d2", "lab", "h:1", nil)
	h1 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	h2 := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})

	// An instance that registered, put two requests in line and died: its
	// rows stay, nobody holds its lock.
	var dead int64
	if err := a.pool.QueryRow(t.Context(), `INSERT INTO devalloc.instances (name, seen_at) VALUES ('dead:1', now()) RETURNING id`).Scan(&dead); err != nil {
		t.Fatal(err)
	}
	deadWaiters := []uuid.UUID{uuid.New(), uuid.New()}
	for _, id := range deadWaiters {
		if _, err := a.pool.Exec(t.Context(), `INSERT INTO devalloc.waiters (id, instance_id, pool, ranked_at, owner, ttl_seconds)
			VALUES ($1, $2, 'lab', clock_timestamp(), 'ghost', 60)`, id, dead); err != nil {
			t.Fatal(err)
		}
	}
	live := goAcquire(t.Context(), a, AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 10 * time.Second, Owner: "live"})
	waitFor(t, "the live waiter behind the dead ones", func() bool { return queueLength(t, a, "lab") == 3 })

	if _, err := a.Release(t.Context(), h1.ID); err != nil {
		t.Fatal(err)
	}
	if r := <-live; r.err != nil || r.lease.Owner != "live" {
		t.Fatalf("the live waiter behind dead ones: %+v %v", r.lease, r.err)
	}
	if _, err := a.Release(t.Context(), h2.ID); err != nil {
		t.Fatal(err)
	}
	if d := mustDevice(t, a, "d2"); d.State != StateIdle {
		t.Fatalf("d2 with only dead waiters in line is %s, want idle", d.State)
	}
	var handed int
	if err := a.pool.QueryRow(t.Context(), `SELECT count(*) FROM devalloc.leases WHERE waiter_id = ANY($1)`, deadWaiters).Scan(&handed); err != nil || handed != 0 {
		t.Fatalf("%d leases handed to a dead instance's waiters (%v)", handed, err)
	}
	if n := a.keeper.forgot.Wait(t, "the dead instance removed", 10*time.Second); n != 1 {
		t.Fatalf("the keeper removed %d instances, want the dead one", n)
	}
	if n := queueLength(t, a, "lab"); n != 0 {
		t.Fatalf("%d rows in line after the dead instance was removed, want 0 (its waiters go with it)", n)
	}
}

// With ProbeOnHandoff a device handed over from the line is probed by the
// waiter; a dead one goes offline (its lease ends as probe_failed) and the
// waiter keeps its place and gets the next device.
func TestProbeOnHandoffSkipsADeadDevice(t *testing.T) {
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

	waiting := goAcquire(t.Context(), a, AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 10 * time.Second, Owner: "w"})
	awaitJoin(t, a, "w")
	if _, err := a.Release(t.Context(), byName["dead"].ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the dead device offline", func() bool { return mustDevice(t, a, "dead").State == StateOffline })
	// It goes offline first, then the waiter rejoins.
	awaitJoin(t, a, "w")
	if _, err := a.Release(t.Context(), byName["good"].ID); err != nil {
		t.Fatal(err)
	}
	r := <-waiting
	if r.err != nil || r.lease.Device.Name != "good" {
		t.Fatalf("waiter: %+v %v, want the good device", r.lease, r.err)
	}
	var reason string
	if err := a.pool.QueryRow(t.Context(), `SELECT end_reason FROM devalloc.leases WHERE device_name = 'dead' AND owner = 'w'`).Scan(&reason); err != nil || reason != EndProbeFailed {
		t.Fatalf("the dead device's handed lease ended %q (%v), want %s", reason, err, EndProbeFailed)
	}
}

func mustQueue(t *testing.T, a *Allocator, pool string) []QueueEntry {
	t.Helper()
	q, err := a.Queue(t.Context(), QueueFilter{Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// cancelLine ends a waiting acquire by waiting for its answer after its
// wait; used for requests a test leaves in line.
func cancelLine(t *testing.T, a *Allocator, r <-chan result) {
	t.Helper()
	a.Drain()
	<-r
}

// A recovery hands the device straight to the first waiter it fits, in the
// recording statement (devalloc.hand_off), and the waiter at another
// instance hears of it at that commit.
func TestRecoveryHandsTheDeviceToTheLine(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.devices SET state = 'offline'`); err != nil {
		t.Fatal(err)
	}
	waiting := goAcquire(t.Context(), b, AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 10 * time.Second, Owner: "w"})
	awaitJoin(t, b, "w")
	var id int64
	if err := a.pool.QueryRow(t.Context(), `SELECT id FROM devalloc.devices WHERE name = 'd1'`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	// What the health checker records when the probe passes.
	rec, err := a.q.RecordRecovered(t.Context(), id)
	if err != nil || len(rec.HandedTo) != 1 {
		t.Fatalf("recovery handed the device to %v (%v), want the one waiter", rec.HandedTo, err)
	}
	r := <-waiting
	if r.err != nil || r.lease.Device.Name != "d1" {
		t.Fatalf("waiter: %+v %v", r.lease, r.err)
	}
	var waiter *uuid.UUID
	if err := a.pool.QueryRow(t.Context(), `SELECT waiter_id FROM devalloc.leases WHERE id = $1`, r.lease.ID).Scan(&waiter); err != nil || waiter == nil {
		t.Fatalf("the lease was not handed over from the line (waiter_id %v, %v)", waiter, err)
	}
}
