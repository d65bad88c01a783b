package db

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/probe"
)

// keyed is an acquire request with an idempotency key.
func keyed(owner, key, pool string, wait time.Duration) AcquireRequest {
	return AcquireRequest{Selector: Selector{Pool: pool}, Owner: owner, IdempotencyKey: key, Wait: wait, Holder: "job-1"}
}

// leaseRows counts the leases recorded for an owner's key, and the devices
// that are leased.
func leaseRows(t *testing.T, a *Allocator, owner, key string) (leases, leased int) {
	t.Helper()
	err := a.pool.QueryRow(t.Context(), `SELECT
		(SELECT count(*) FROM devalloc.leases WHERE owner = $1 AND idempotency_key = $2),
		(SELECT count(*) FROM devalloc.devices WHERE state = 'leased')`, owner, key).Scan(&leases, &leased)
	if err != nil {
		t.Fatal(err)
	}
	return leases, leased
}

// waitFlights waits until no flight goroutine runs any more.
func waitFlights(t *testing.T, a *Allocator) {
	t.Helper()
	a.flights.running.Wait()
	if n := a.flights.inFlight(); n != 0 {
		t.Fatalf("%d flights registered after all ended", n)
	}
}

func TestIdempotentRetryReturnsTheSameLease(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	mustCreate(t, a, "d2", "lab", "h:2", nil)

	first, replayed, err := a.AcquireOrReplay(t.Context(), keyed("alice", "k1", "lab", 0))
	if err != nil || replayed {
		t.Fatalf("first acquire: replayed=%v err=%v", replayed, err)
	}
	// A retry may wait differently: still the same request.
	again, replayed, err := a.AcquireOrReplay(t.Context(), keyed("alice", "k1", "lab", 5*time.Second))
	if err != nil || !replayed || again.ID != first.ID || again.FencingToken != first.FencingToken {
		t.Fatalf("retry: lease %s replayed=%v err=%v, want lease %s replayed", again.ID, replayed, err, first.ID)
	}
	if n, leased := leaseRows(t, a, "alice", "k1"); n != 1 || leased != 1 {
		t.Fatalf("%d leases for the key, %d devices leased; want 1 and 1", n, leased)
	}

	// Ended since: the retry gets it as it is now, and takes nothing new.
	if _, err := a.Release(t.Context(), first.ID); err != nil {
		t.Fatal(err)
	}
	ended, replayed, err := a.AcquireOrReplay(t.Context(), keyed("alice", "k1", "lab", 0))
	if err != nil || !replayed || ended.ID != first.ID || ended.EndReason != EndReleased || ended.Active() {
		t.Fatalf("retry after release: %+v replayed=%v err=%v", ended, replayed, err)
	}
	if n, leased := leaseRows(t, a, "alice", "k1"); n != 1 || leased != 0 {
		t.Fatalf("%d leases for the key, %d devices leased; want 1 and 0", n, leased)
	}
}

func TestIdempotencyKeyReusedForADifferentRequest(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", Labels{"os": "14"})
	mustCreate(t, a, "d2", "lab", "h:2", Labels{"os": "14"})
	mustCreate(t, a, "o1", "other", "h:3", nil)
	base := keyed("alice", "k1", "lab", 0)
	first, err := a.Acquire(t.Context(), base)
	if err != nil {
		t.Fatal(err)
	}
	before := mustDevice(t, a, "d2")

	for what, change := range map[string]func(*AcquireRequest){
		"pool":   func(r *AcquireRequest) { r.Selector.Pool = "other" },
		"labels": func(r *AcquireRequest) { r.Selector.Labels = Labels{"os": "14"} },
		"ttl":    func(r *AcquireRequest) { r.TTL = time.Hour },
		"holder": func(r *AcquireRequest) { r.Holder = "job-2" },
	} {
		req := base
		change(&req)
		if _, err := a.Acquire(t.Context(), req); !errors.Is(err, ErrIdempotencyKeyReused) {
			t.Fatalf("different %s: err = %v, want ErrIdempotencyKeyReused", what, err)
		}
	}
	// Nothing changed: one lease, the other devices untouched.
	if n, leased := leaseRows(t, a, "alice", "k1"); n != 1 || leased != 1 {
		t.Fatalf("%d leases for the key, %d devices leased; want 1 and 1", n, leased)
	}
	if after := mustDevice(t, a, "d2"); after.State != StateIdle || after.FencingToken != before.FencingToken {
		t.Fatalf("d2 changed: %+v", after)
	}
	if got, err := a.GetLease(t.Context(), first.ID); err != nil || !got.Active() {
		t.Fatalf("first lease after the refused retries: %+v %v", got, err)
	}
}

func TestIdempotencyKeysArePerOwner(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	mustCreate(t, a, "d2", "lab", "h:2", nil)
	la, err := a.Acquire(t.Context(), keyed("alice", "same", "lab", 0))
	if err != nil {
		t.Fatal(err)
	}
	// A different request, even: bob's key space is his own.
	req := keyed("bob", "same", "lab", 0)
	req.Holder = "bob's job"
	lb, err := a.Acquire(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if la.ID == lb.ID || la.Device.Name == lb.Device.Name {
		t.Fatalf("alice and bob share a lease or device: %+v %+v", la, lb)
	}
}

// Many retries of one request at one instance, at once: one lease, and
// every caller gets it.
func TestConcurrentRetriesAtOneInstanceGetOneLease(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	for i := range 5 {
		mustCreate(t, a, fmt.Sprintf("d%d", i), "lab", fmt.Sprintf("h:%d", i), nil)
	}
	ids := acquireAll(t, []*Allocator{a}, 20, keyed("alice", "k", "lab", 0))
	if len(ids) != 1 {
		t.Fatalf("callers got %d different leases: %v", len(ids), ids)
	}
	if n, leased := leaseRows(t, a, "alice", "k"); n != 1 || leased != 1 {
		t.Fatalf("%d leases for the key, %d devices leased; want 1 and 1", n, leased)
	}
	waitFlights(t, a)
}

// The same across two instances: the unique index lets one grant win; the
// other instance rolls back and answers with the winner's lease.
func TestConcurrentRetriesAcrossInstancesGetOneLease(t *testing.T) {
	// Both acquire paths: the transaction that probes, and the one
	// statement that grants devices needing no probe.
	for _, kind := range []string{"tcp", "none"} {
		t.Run("probe="+kind, func(t *testing.T) { testConcurrentRetriesAcrossInstances(t, kind) })
	}
}

func testConcurrentRetriesAcrossInstances(t *testing.T, probeKind string) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	for i := range 5 {
		mustCreateProbed(t, a, fmt.Sprintf("d%d", i), "lab", fmt.Sprintf("h:%d", i), probeKind, nil)
	}
	for round := range 10 {
		key := fmt.Sprintf("k%d", round)
		ids := acquireAll(t, []*Allocator{a, b}, 10, keyed("alice", key, "lab", 0))
		if len(ids) != 1 {
			t.Fatalf("round %d: callers got %d different leases: %v", round, len(ids), ids)
		}
		var id uuid.UUID
		for id = range ids {
		}
		if n, leased := leaseRows(t, a, "alice", key); n != 1 || leased != 1 {
			t.Fatalf("round %d: %d leases for the key, %d devices leased; want 1 and 1", round, n, leased)
		}
		// The losers' devices went back to idle, not offline.
		devs, err := a.ListDevices(t.Context(), DeviceFilter{Pool: "lab", State: StateIdle})
		if err != nil || len(devs) != 4 {
			t.Fatalf("round %d: %d idle devices (%v), want 4", round, len(devs), err)
		}
		if _, err := a.Release(t.Context(), id); err != nil {
			t.Fatal(err)
		}
	}
	waitFlights(t, a)
	waitFlights(t, b)
}

// acquireAll runs callers requests per allocator at once and returns the
// distinct lease ids they got; every call must succeed.
func acquireAll(t *testing.T, allocs []*Allocator, callers int, req AcquireRequest) map[uuid.UUID]bool {
	t.Helper()
	var (
		mu   sync.Mutex
		ids  = map[uuid.UUID]bool{}
		errs []error
		wg   sync.WaitGroup
	)
	start := make(chan struct{})
	for _, a := range allocs {
		for range callers {
			wg.Go(func() {
				<-start
				l, err := a.Acquire(t.Context(), req)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
					return
				}
				ids[l.ID] = true
			})
		}
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d acquires failed, first: %v", len(errs), errs[0])
	}
	return ids
}

type result struct {
	lease    Lease
	replayed bool
	err      error
}

func goAcquire(ctx context.Context, a *Allocator, req AcquireRequest) <-chan result {
	out := make(chan result, 1)
	go func() {
		l, replayed, err := a.AcquireOrReplay(ctx, req)
		out <- result{l, replayed, err}
	}()
	return out
}

// A retry while the first request still waits joins it: one place in the
// queue, and when a device is freed both get the same lease.
func TestRetryWhileWaitingJoinsTheFirstRequest(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "only", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})

	first := goAcquire(t.Context(), a, keyed("alice", "k", "lab", 10*time.Second))
	awaitJoin(t, a, "alice")
	retry := goAcquire(t.Context(), a, keyed("alice", "k", "lab", 10*time.Second))
	waitFor(t, "the retry to join", func() bool { return a.flights.callersOf("alice", "k") == 2 })
	if n := a.Hub().Waiting("lab"); n != 1 {
		t.Fatalf("%d waiters in the hub, want the one flight", n)
	}

	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	r1, r2 := <-first, <-retry
	if r1.err != nil || r2.err != nil {
		t.Fatalf("first: %v, retry: %v", r1.err, r2.err)
	}
	if r1.lease.ID != r2.lease.ID || r1.replayed || !r2.replayed {
		t.Fatalf("first %s (replayed %v), retry %s (replayed %v): want one lease, replayed for the retry",
			r1.lease.ID, r1.replayed, r2.lease.ID, r2.replayed)
	}
	if n, leased := leaseRows(t, a, "alice", "k"); n != 1 || leased != 1 {
		t.Fatalf("%d leases for the key, %d devices leased; want 1 and 1", n, leased)
	}
	waitFlights(t, a)
}

// The first request's client goes away (which is why it retried): the
// acquire keeps running for the retry that joined it.
func TestJoinedAcquireOutlivesTheFirstCaller(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "only", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})

	ctx, cancel := context.WithCancel(t.Context())
	first := goAcquire(ctx, a, keyed("alice", "k", "lab", 10*time.Second))
	awaitJoin(t, a, "alice")
	retry := goAcquire(t.Context(), a, keyed("alice", "k", "lab", 10*time.Second))
	waitFor(t, "the retry to join", func() bool { return a.flights.callersOf("alice", "k") == 2 })

	cancel()
	if r := <-first; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("first caller: %v, want context.Canceled", r.err)
	}
	if n := a.flights.callersOf("alice", "k"); n != 1 {
		t.Fatalf("flight has %d callers after the first left, want 1", n)
	}
	if n := a.Hub().Waiting("lab"); n != 1 {
		t.Fatalf("flight left the queue with a caller still there (%d waiting)", n)
	}
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	r := <-retry
	if r.err != nil || r.lease.Device.Name != "only" || !r.lease.Active() {
		t.Fatalf("retry: %+v %v", r.lease, r.err)
	}
	waitFlights(t, a)
}

// When every caller has gone the acquire stops: nothing is left waiting and
// no lease is taken for nobody.
func TestAcquireWithNoCallersLeftStops(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "only", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})

	ctx, cancel := context.WithCancel(t.Context())
	first := goAcquire(ctx, a, keyed("alice", "k", "lab", 10*time.Second))
	awaitJoin(t, a, "alice")
	cancel()
	if r := <-first; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", r.err)
	}
	waitFlights(t, a)
	if n := a.Hub().Waiting("lab"); n != 0 {
		t.Fatalf("%d waiters left", n)
	}
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	if n, _ := leaseRows(t, a, "alice", "k"); n != 0 {
		t.Fatalf("%d leases for a request nobody waits for", n)
	}
	// A later retry starts afresh and gets the device.
	if l, err := a.Acquire(t.Context(), keyed("alice", "k", "lab", 0)); err != nil || l.Device.Name != "only" {
		t.Fatalf("fresh retry: %+v %v", l, err)
	}
}

// A different request with the key of one still running is refused at
// once, and the running one is not disturbed.
func TestDifferentRequestWithAKeyInFlight(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "only", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})

	first := goAcquire(t.Context(), a, keyed("alice", "k", "lab", 10*time.Second))
	awaitJoin(t, a, "alice")
	other := keyed("alice", "k", "lab", 10*time.Second)
	other.Holder = "job-2"
	if _, err := a.Acquire(t.Context(), other); !errors.Is(err, ErrIdempotencyKeyReused) {
		t.Fatalf("err = %v, want ErrIdempotencyKeyReused", err)
	}
	if n := a.flights.callersOf("alice", "k"); n != 1 {
		t.Fatalf("flight has %d callers, want 1", n)
	}
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	if r := <-first; r.err != nil || r.lease.Holder != "job-1" {
		t.Fatalf("first: %+v %v", r.lease, r.err)
	}
	waitFlights(t, a)
}

// A retry that may wait longer than the first request keeps the shared
// acquire waiting past the first one's deadline.
func TestJoinedAcquireWaitsForTheLongestWait(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "only", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})

	start := time.Now()
	first := goAcquire(t.Context(), a, keyed("alice", "k", "lab", time.Second))
	awaitJoin(t, a, "alice")
	retry := goAcquire(t.Context(), a, keyed("alice", "k", "lab", 10*time.Second))
	waitFor(t, "the retry to join", func() bool { return a.flights.callersOf("alice", "k") == 2 })
	if left := a.flights.remainingOf("alice", "k"); left < 5*time.Second {
		t.Fatalf("the shared acquire waits %v more, want the retry's 10 s", left)
	}
	// What is tested is time passing: the first request's own wait must
	// run out before the device is freed.
	time.Sleep(time.Until(start.Add(1500 * time.Millisecond)))
	select {
	case r := <-first:
		t.Fatalf("the shared acquire ended at the first request's deadline: %v", r.err)
	default:
	}
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	r1, r2 := <-first, <-retry
	if r1.err != nil || r2.err != nil || r1.lease.ID != r2.lease.ID {
		t.Fatalf("first %+v %v, retry %+v %v", r1.lease, r1.err, r2.lease, r2.err)
	}
	waitFlights(t, a)
}

func TestFingerprintIgnoresWaitAndLabelOrder(t *testing.T) {
	r1 := AcquireRequest{Selector: Selector{Pool: "p", Labels: Labels{"a": "1", "b": "2"}}, TTL: time.Minute, Holder: "h", Wait: time.Second}
	r2 := AcquireRequest{Selector: Selector{Pool: "p", Labels: Labels{"b": "2", "a": "1"}}, TTL: time.Minute, Holder: "h", Wait: time.Hour}
	if string(r1.fingerprintOf()) != string(r2.fingerprintOf()) {
		t.Fatal("same request, different fingerprints")
	}
	if r3 := (AcquireRequest{Selector: Selector{Pool: "p"}}); string(r3.fingerprintOf()) !=
		string((AcquireRequest{Selector: Selector{Pool: "p", Labels: Labels{}}}).fingerprintOf()) {
		t.Fatal("nil and empty labels differ")
	}
	r2.Holder = "h2"
	if string(r1.fingerprintOf()) == string(r2.fingerprintOf()) {
		t.Fatal("different holders, same fingerprint")
	}
}

// The grant that loses the key at the database rolls back, leaving its
// device idle, and answers with the winner's lease. Instance a is held in
// its probe (after its pick, before its grant) while b grants.
func TestGrantThatLosesTheKeyRollsBack(t *testing.T) {
	url := newDB(t)
	probing, proceed := make(chan struct{}), make(chan struct{})
	gated := probe.Func(func(ctx context.Context, _ probe.Kind, _ string) error {
		close(probing)
		<-proceed
		return nil
	})
	a := newAllocator(t, url, testConfig(gated))
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, b, "d1", "lab", "h:1", nil)
	mustCreate(t, b, "d2", "lab", "h:2", nil)

	ra := goAcquire(t.Context(), a, keyed("alice", "k", "lab", 0))
	<-probing // a holds d1's row lock
	won, err := b.Acquire(t.Context(), keyed("alice", "k", "lab", 0))
	if err != nil || won.Device.Name != "d2" {
		t.Fatalf("b: %+v %v, want d2", won, err)
	}
	close(proceed)
	r := <-ra
	if r.err != nil || r.lease.ID != won.ID || !r.replayed {
		t.Fatalf("a: %+v replayed=%v err=%v, want b's lease %s replayed", r.lease, r.replayed, r.err, won.ID)
	}
	if d := mustDevice(t, a, "d1"); d.State != StateIdle || d.FencingToken != 0 {
		t.Fatalf("the loser's device: %+v, want idle and untouched", d)
	}
	waitFlights(t, a)
}

// A keyed acquire waiting in line at one instance is handed the freed
// device even though nothing tells it (the trigger is off and the release
// is by an instance that notifies nobody); its retry at another instance
// replays that lease, and when the wait ends the waiting acquire answers
// with the same lease instead of "no device".
func TestWaitEndingAfterARetryWonElsewhereReplays(t *testing.T) {
	url := newDB(t)
	cfg := testConfig(&fakeProber{})
	cfg.RecheckInterval = time.Hour
	a := newAllocator(t, url, cfg)
	b := newAllocator(t, url, cfg)
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), "ALTER TABLE devalloc.devices DISABLE TRIGGER devices_notify_idle_update"); err != nil {
		t.Fatal(err)
	}

	atB := goAcquire(t.Context(), b, keyed("alice", "k", "lab", time.Second))
	waitFor(t, "b's acquire to wait", func() bool { return b.Hub().Waiting("lab") == 1 })
	waitFor(t, "b's acquire in line", func() bool { return queueLength(t, a, "lab") == 1 })
	if _, err := silentInstance(a).Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	won, replayed, err := a.AcquireOrReplay(t.Context(), keyed("alice", "k", "lab", 0))
	if err != nil || !replayed {
		t.Fatalf("the retry at a: %+v replayed=%v %v; want the lease handed to the waiting request", won, replayed, err)
	}
	r := <-atB
	if r.err != nil || r.lease.ID != won.ID {
		t.Fatalf("b's acquire ended with %+v replayed=%v %v; want the lease the retry replayed (%s)", r.lease, r.replayed, r.err, won.ID)
	}
	waitFlights(t, b)
}
