package db

import (
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestAcquireRenewRelease(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "pixel-1", "android", "10.0.0.1:5555", Labels{"model": "pixel"})

	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "android", Labels: Labels{"model": "pixel"}}, TTL: time.Minute, Holder: "job-1"})
	if lease.Device.Name != "pixel-1" || lease.Device.Address != "10.0.0.1:5555" || lease.Holder != "job-1" || lease.FencingToken != 1 {
		t.Fatalf("lease = %+v", lease)
	}
	if got := lease.ExpiresAt.Sub(lease.AcquiredAt); got < 59*time.Second || got > 61*time.Second {
		t.Fatalf("ttl = %v, want 1m", got)
	}
	dev := mustDevice(t, a, "pixel-1")
	if dev.State != StateLeased || dev.LeaseID == nil || *dev.LeaseID != lease.ID {
		t.Fatalf("device after acquire = %+v", dev)
	}

	renewed, err := a.Renew(t.Context(), lease.ID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !renewed.ExpiresAt.After(lease.ExpiresAt.Add(58 * time.Minute)) {
		t.Fatalf("renew moved expiry from %v to %v", lease.ExpiresAt, renewed.ExpiresAt)
	}

	released, err := a.Release(t.Context(), lease.ID)
	if err != nil || released.EndReason != EndReleased || released.ReleasedAt == nil {
		t.Fatalf("release = %+v, %v", released, err)
	}
	if dev := mustDevice(t, a, "pixel-1"); dev.State != StateIdle || dev.LeaseID != nil {
		t.Fatalf("device after release = %+v", dev)
	}
	if _, err := a.Release(t.Context(), lease.ID); err != nil {
		t.Fatalf("a second release by its owner must succeed again: %v", err)
	}
	if _, err := a.Renew(t.Context(), lease.ID, time.Minute); endReason(err) != EndReleased {
		t.Fatalf("renew after release: %v, want a LeaseEndedError (released)", err)
	}

	again := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "android"}})
	if again.FencingToken != 2 {
		t.Fatalf("fencing token of the second lease = %d, want 2", again.FencingToken)
	}
}

func TestUnknownLease(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	id := uuid.New()
	if _, err := a.GetLease(t.Context(), id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get: %v", err)
	}
	if _, err := a.Renew(t.Context(), id, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("renew: %v", err)
	}
	if _, err := a.Release(t.Context(), id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("release: %v", err)
	}
}

func TestExpiredLeaseIsReapedOnceAndFreesTheDevice(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "board-1", "lab", "10.0.0.2:22", nil)
	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, TTL: 200 * time.Millisecond})

	// Not yet expired: nothing to reap.
	if n := a.reaper.pass(t.Context()); n != 0 {
		t.Fatalf("reaped %d live leases", n)
	}
	time.Sleep(300 * time.Millisecond) // let the database clock pass the TTL

	// Two instances reap at once; the lease ends exactly once.
	got := make(chan int, 2)
	for _, x := range []*Allocator{a, b} {
		go func() { got <- x.reaper.pass(t.Context()) }()
	}
	if total := <-got + <-got; total != 1 {
		t.Fatalf("two reapers ended %d leases, want exactly 1", total)
	}
	ended, err := a.GetLease(t.Context(), lease.ID)
	if err != nil || ended.EndReason != EndExpired {
		t.Fatalf("lease after reap = %+v, %v", ended, err)
	}
	if dev := mustDevice(t, a, "board-1"); dev.State != StateIdle {
		t.Fatalf("device after expiry = %+v", dev)
	}
	if _, err := a.Renew(t.Context(), lease.ID, time.Minute); endReason(err) != EndExpired {
		t.Fatalf("renew after expiry: %v", err)
	}
	if _, err := a.Release(t.Context(), lease.ID); endReason(err) != EndExpired {
		t.Fatalf("release after expiry: %v, want a LeaseEndedError (expired)", err)
	}
}

func TestLapsedLeaseCannotBeRenewedOrReleasedBeforeTheReaper(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "board-1", "lab", "10.0.0.2:22", nil)
	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, TTL: 100 * time.Millisecond})
	time.Sleep(200 * time.Millisecond)

	if _, err := a.Renew(t.Context(), lease.ID, time.Minute); endReason(err) != EndExpired {
		t.Fatalf("renew of a lapsed lease: %v, want expired", err)
	}
	if _, err := a.Release(t.Context(), lease.ID); endReason(err) != EndExpired {
		t.Fatalf("release of a lapsed lease: %v, want expired", err)
	}
	// The release recorded the expiry and freed the device.
	if dev := mustDevice(t, a, "board-1"); dev.State != StateIdle {
		t.Fatalf("device = %+v", dev)
	}
}

func TestRevoke(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "board-1", "lab", "10.0.0.2:22", nil)
	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	if _, err := a.Revoke(t.Context(), lease.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Release(t.Context(), lease.ID); endReason(err) != EndRevoked {
		t.Fatalf("holder's release after revoke: %v, want revoked", err)
	}
}

func TestListLeases(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "a", "p", "h:1", nil)
	mustCreate(t, a, "b", "q", "h:2", nil)
	la := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "p"}, Owner: "alice"})
	mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "q"}, Owner: "bob"})
	if _, err := a.Release(t.Context(), la.ID); err != nil {
		t.Fatal(err)
	}
	all, _ := a.ListLeases(t.Context(), LeaseFilter{})
	active, _ := a.ListLeases(t.Context(), LeaseFilter{ActiveOnly: true})
	alice, _ := a.ListLeases(t.Context(), LeaseFilter{Owner: "alice"})
	inQ, _ := a.ListLeases(t.Context(), LeaseFilter{Pool: "q"})
	if len(all) != 2 || len(active) != 1 || len(alice) != 1 || len(inQ) != 1 || inQ[0].Owner != "bob" {
		t.Fatalf("all=%d active=%d alice=%d q=%d", len(all), len(active), len(alice), len(inQ))
	}
}

// ReleaseOwn ends only the caller's own active lease; anything else is
// left untouched for Release/Revoke to explain.
func TestReleaseOwnEndsOnlyTheOwnersActiveLease(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "alice", TTL: time.Minute})

	for _, owner := range []string{"bob", ""} {
		if done, err := a.ReleaseOwn(t.Context(), lease.ID, owner); done || err != nil {
			t.Fatalf("ReleaseOwn by %q of alice's lease = %v, %v; want false, nil", owner, done, err)
		}
	}
	if d := mustDevice(t, a, "d1"); d.State != StateLeased {
		t.Fatalf("someone else's ReleaseOwn changed the device: %+v", d)
	}
	if done, err := a.ReleaseOwn(t.Context(), uuid.New(), "alice"); done || err != nil {
		t.Fatalf("ReleaseOwn of an unknown lease = %v, %v", done, err)
	}
	if done, err := a.ReleaseOwn(t.Context(), lease.ID, "alice"); !done || err != nil {
		t.Fatalf("ReleaseOwn by the owner = %v, %v; want true, nil", done, err)
	}
	got, err := a.GetLease(t.Context(), lease.ID)
	if err != nil || got.EndReason != EndReleased {
		t.Fatalf("lease after ReleaseOwn = %+v, %v", got, err)
	}
	if d := mustDevice(t, a, "d1"); d.State != StateIdle {
		t.Fatalf("device after ReleaseOwn: %+v", d)
	}
	// A second release by the owner is not done here: Release answers it
	// (idempotently).
	if done, err := a.ReleaseOwn(t.Context(), lease.ID, "alice"); done || err != nil {
		t.Fatalf("second ReleaseOwn = %v, %v; want false, nil", done, err)
	}

	// A lease that lapsed before its owner released it ends as expired.
	lapsed := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "alice", TTL: time.Minute})
	if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.leases SET expires_at = now() - interval '1 second' WHERE id = $1`, lapsed.ID); err != nil {
		t.Fatal(err)
	}
	if done, err := a.ReleaseOwn(t.Context(), lapsed.ID, "alice"); done || endReason(err) != EndExpired {
		t.Fatalf("ReleaseOwn of a lapsed lease = %v, %v; want a LeaseEndedError (expired)", done, err)
	}
	if d := mustDevice(t, a, "d1"); d.State != StateIdle {
		t.Fatalf("device after the lapsed lease ended: %+v", d)
	}
}
