package db

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/probe"
)

func TestProbeFailureFallsThroughAndTheDeadDeviceRecovers(t *testing.T) {
	prober := &fakeProber{}
	cfg := testConfig(prober)
	cfg.HealthBackoffMin = 10 * time.Millisecond
	a := newAllocator(t, newDB(t), cfg)
	// Registered first, so it is the least recently idle and picked first.
	mustCreate(t, a, "dead", "lab", "10.0.0.9:22", nil)
	mustCreate(t, a, "live", "lab", "10.0.0.1:22", nil)
	prober.setDead("10.0.0.9:22", true)

	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	if lease.Device.Name != "live" {
		t.Fatalf("got %q, want the live device", lease.Device.Name)
	}
	dead := mustDevice(t, a, "dead")
	if dead.State != StateOffline || dead.StateReason != "tcp 10.0.0.9:22: connection refused" || dead.LastProbeOK == nil || *dead.LastProbeOK {
		t.Fatalf("dead device = %+v", dead)
	}

	// Still dead: the health checker leaves it offline.
	time.Sleep(20 * time.Millisecond)
	if n := a.health.pass(t.Context()); n != 0 {
		t.Fatalf("recovered %d dead devices", n)
	}
	// It answers again: the next pass due brings it back to idle.
	prober.setDead("10.0.0.9:22", false)
	waitFor(t, "recovery", func() bool { return a.health.pass(t.Context()) == 1 })
	if d := mustDevice(t, a, "dead"); d.State != StateIdle || d.StateReason != "" {
		t.Fatalf("recovered device = %+v", d)
	}
	if l := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}}); l.Device.Name != "dead" {
		t.Fatalf("got %q, want the recovered device", l.Device.Name)
	}
}

func TestAllCandidatesDeadEndsWithNoDevice(t *testing.T) {
	prober := &fakeProber{}
	a := newAllocator(t, newDB(t), testConfig(prober))
	for _, name := range []string{"d1", "d2"} {
		mustCreate(t, a, name, "lab", name+":22", nil)
		prober.setDead(name+":22", true)
	}
	_, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "x"})
	if !errors.Is(err, ErrNoDevice) {
		t.Fatalf("err = %v, want ErrNoDevice", err)
	}
	devs, _ := a.ListDevices(t.Context(), DeviceFilter{Pool: "lab", State: StateOffline})
	if len(devs) != 2 {
		t.Fatalf("%d devices offline, want 2", len(devs))
	}
}

func TestLabelsSelectDevices(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "galaxy", "android", "h:1", Labels{"model": "galaxy", "os": "14"})
	mustCreate(t, a, "pixel", "android", "h:2", Labels{"model": "pixel", "os": "14"})
	l := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "android", Labels: Labels{"model": "pixel"}}})
	if l.Device.Name != "pixel" || l.Device.Labels["os"] != "14" {
		t.Fatalf("lease device = %+v", l.Device)
	}
}

func TestUnsatisfiableSelectorFailsAtOnce(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "pixel", "android", "h:1", Labels{"model": "pixel"})
	start := time.Now()
	for _, sel := range []Selector{
		{Pool: "android", Labels: Labels{"model": "iphone"}},
		{Pool: "no-such-pool"},
	} {
		_, err := a.Acquire(t.Context(), AcquireRequest{Selector: sel, Wait: 10 * time.Second, Owner: "x"})
		if !errors.Is(err, ErrUnsatisfiable) {
			t.Fatalf("%+v: err = %v, want ErrUnsatisfiable", sel, err)
		}
	}
	if time.Since(start) > 2*time.Second {
		t.Fatal("an unsatisfiable selector waited")
	}
}

func TestWaitTimesOut(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "only", "lab", "h:1", nil)
	mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})

	start := time.Now()
	_, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 300 * time.Millisecond, Owner: "x"})
	if !errors.Is(err, ErrNoDevice) {
		t.Fatalf("err = %v, want ErrNoDevice", err)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond || waited > 3*time.Second {
		t.Fatalf("waited %v, want about 300ms", waited)
	}
	if n := a.Hub().Waiting("lab"); n != 0 {
		t.Fatalf("%d waiters left behind", n)
	}
}

// A waiter on one instance is woken by a release made through another: the
// NOTIFY from the devices trigger reaches the waiter's instance through its
// LISTEN connection. The re-check is off (an hour), so only the
// notification can wake it.
func TestWaiterWokenByReleaseOnAnotherInstance(t *testing.T) {
	url := newDB(t)
	holder := newAllocator(t, url, testConfig(&fakeProber{}))
	waiter := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, holder, "only", "lab", "h:1", nil)

	const rounds = 20
	var total time.Duration
	for i := range rounds {
		held := mustAcquire(t, holder, AcquireRequest{Selector: Selector{Pool: "lab"}})
		got := make(chan error, 1)
		var acquiredAt time.Time
		go func() {
			l, err := waiter.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 10 * time.Second, Owner: "w"})
			acquiredAt = time.Now()
			if err == nil {
				_, err = waiter.Release(t.Context(), l.ID)
			}
			got <- err
		}()
		awaitJoin(t, waiter, "w")
		time.Sleep(5 * time.Millisecond) // let it finish its empty first attempt
		if _, err := holder.Release(t.Context(), held.ID); err != nil {
			t.Fatal(err)
		}
		releasedAt := time.Now()
		if err := <-got; err != nil {
			t.Fatalf("round %d: waiter: %v", i, err)
		}
		total += acquiredAt.Sub(releasedAt)
	}
	t.Logf("cross-instance wake latency (release returned -> waiter's acquire returned), mean of %d: %v", rounds, total/rounds)
}

// With the trigger's notifications gone (as if lost), the per-pool re-check
// still hands the freed device to the waiter.
func TestRecheckCoversLostNotifications(t *testing.T) {
	url := newDB(t)
	cfg := testConfig(&fakeProber{})
	cfg.RecheckInterval = 100 * time.Millisecond
	a := newAllocator(t, url, cfg)
	mustCreate(t, a, "only", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), "ALTER TABLE devalloc.devices DISABLE TRIGGER devices_notify_idle_update"); err != nil {
		t.Fatal(err)
	}

	got := make(chan error, 1)
	go func() {
		_, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 10 * time.Second, Owner: "w"})
		got <- err
	}()
	awaitJoin(t, a, "w")
	if _, err := silentInstance(a).Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("waiter: %v", err)
	}
}

// Killing the listener's connection loses whatever was notified while it was
// down; the reconnect triggers a full re-check that serves the waiter. The
// trigger is disabled and the periodic re-check is off, so nothing but that
// reconnect re-check can serve it.
func TestListenerReconnectServesWaiters(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "only", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})

	got := make(chan error, 1)
	go func() {
		_, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 10 * time.Second, Owner: "w"})
		got <- err
	}()
	awaitJoin(t, a, "w")

	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), "ALTER TABLE devalloc.devices DISABLE TRIGGER devices_notify_idle_update"); err != nil {
		t.Fatal(err)
	}
	if _, err := silentInstance(a).Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	var killed int
	if err := conn.QueryRow(t.Context(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid IN (
			SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 1685482609)`).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("killed %d listeners: %v", killed, err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("waiter: %v", err)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("waiter not served after the listener reconnected")
	}
	waitFor(t, "ready again", func() bool { return a.Ready(t.Context()) == nil })
}

func TestCancelledWaitLeavesNothing(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "only", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})

	ctx, cancel := context.WithCancel(t.Context())
	got := make(chan error, 1)
	go func() {
		_, err := a.Acquire(ctx, AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 10 * time.Second, Owner: "gone"})
		got <- err
	}()
	awaitJoin(t, a, "gone")
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if n := a.Hub().Waiting("lab"); n != 0 {
		t.Fatalf("%d waiters left", n)
	}
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	leases, _ := a.ListLeases(t.Context(), LeaseFilter{Owner: "gone"})
	if len(leases) != 0 {
		t.Fatalf("the cancelled request left leases: %+v", leases)
	}
}

// A client that goes away while its device is being probed gets nothing, and
// the device is not blamed: it stays idle, not offline.
func TestCancelDuringProbeLeavesNothing(t *testing.T) {
	probing := make(chan struct{})
	slow := probe.Func(func(ctx context.Context, _ probe.Kind, _ string) error {
		close(probing)
		<-ctx.Done()
		return ctx.Err()
	})
	a := newAllocator(t, newDB(t), testConfig(slow))
	mustCreate(t, a, "only", "lab", "h:1", nil)

	ctx, cancel := context.WithCancel(t.Context())
	got := make(chan error, 1)
	go func() {
		_, err := a.Acquire(ctx, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "gone"})
		got <- err
	}()
	<-probing
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := mustDevice(t, a, "only"); d.State != StateIdle || d.FencingToken != 0 {
		t.Fatalf("device after a cancelled acquire = %+v", d)
	}
	leases, _ := a.ListLeases(t.Context(), LeaseFilter{})
	if len(leases) != 0 {
		t.Fatalf("leases after a cancelled acquire: %+v", leases)
	}
}

// A probe that never answers is cut at ProbeTimeout, and the device goes
// offline instead of holding the transaction open.
func TestHangingProbeIsBounded(t *testing.T) {
	hang := probe.Func(func(ctx context.Context, _ probe.Kind, _ string) error {
		<-ctx.Done()
		return ctx.Err()
	})
	cfg := testConfig(hang)
	cfg.ProbeTimeout = 200 * time.Millisecond
	a := newAllocator(t, newDB(t), cfg)
	mustCreate(t, a, "hangs", "lab", "h:1", nil)
	start := time.Now()
	_, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "x"})
	if !errors.Is(err, ErrNoDevice) {
		t.Fatalf("err = %v, want ErrNoDevice", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("acquire took %v with a 200ms probe timeout", took)
	}
	if d := mustDevice(t, a, "hangs"); d.State != StateOffline {
		t.Fatalf("device = %+v, want offline", d)
	}
}

// More dead devices than one transaction probes: an acquire that may not
// wait still reaches the live device behind them, in further rounds.
func TestManyDeadDevicesAheadOfALiveOne(t *testing.T) {
	prober := &fakeProber{}
	a := newAllocator(t, newDB(t), testConfig(prober))
	for i := range 5 {
		addr := fmt.Sprintf("dead-%d:22", i)
		mustCreate(t, a, fmt.Sprintf("dead-%d", i), "lab", addr, nil)
		prober.setDead(addr, true)
	}
	mustCreate(t, a, "live", "lab", "live:22", nil)
	if l := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}}); l.Device.Name != "live" {
		t.Fatalf("got %q, want live", l.Device.Name)
	}
}

// The re-check costs one query per pool and pass, plus one for the line,
// however many acquires wait: a thousand waiters must not mean a thousand
// queries per interval.
func TestRecheckQueriesDoNotGrowWithWaiters(t *testing.T) {
	cfg := testConfig(&fakeProber{})
	cfg.RecheckInterval = 50 * time.Millisecond
	a := newAllocator(t, newDB(t), cfg)
	mustCreate(t, a, "only", "lab", "h:1", nil)
	mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})

	const waiters = 1000
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{}, waiters)
	for range waiters {
		go func() {
			defer func() { done <- struct{}{} }()
			a.Acquire(ctx, AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: time.Minute, Owner: "w"}) //nolint:errcheck // cancelled below
		}()
	}
	waitFor(t, "all waiters queued", func() bool { return a.Hub().Waiting("lab") == waiters })
	before := a.rechecker.queries.Load()
	time.Sleep(time.Second)
	passes := a.rechecker.queries.Load() - before
	cancel()
	for range waiters {
		<-done
	}
	// About twenty passes of 50 ms (jittered ±20%) in a second, two queries
	// each (the pool's idle devices, which waiters are still in line);
	// fewer on a loaded machine, never one per waiter.
	if passes < 1 || passes > 60 {
		t.Fatalf("%d re-check queries in 1 s with %d waiters; want about 40 (two per pass)", passes, waiters)
	}
}

// Drain answers waiting acquires at once, so shutdown is not held up by
// long polls, and the instance stops being ready.
func TestDrainEndsWaits(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "only", "lab", "h:1", nil)
	mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	got := make(chan error, 1)
	go func() {
		_, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: time.Minute, Owner: "w"})
		got <- err
	}()
	awaitJoin(t, a, "w")
	a.Drain()
	select {
	case err := <-got:
		if !errors.Is(err, ErrShuttingDown) {
			t.Fatalf("err = %v, want ErrShuttingDown", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a waiting acquire outlived Drain")
	}
	if _, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: time.Minute, Owner: "w"}); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("a new wait while draining: %v", err)
	}
	if a.Ready(t.Context()) == nil {
		t.Fatal("a draining instance says it is ready")
	}
}
