package db

import (
	"testing"
	"time"

	"github.com/devalloc/devalloc/db/dbtest"
)

// TestRequestsSurviveCutConnections: after every connection of the
// database was terminated (as a failover or a restart does), each kind of
// request still succeeds: the pool's dead connections are found and
// replaced before use instead of failing the request (57P01).
func TestRequestsSurviveCutConnections(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	keys := NewKeyStore(a.pool)
	ctx := t.Context()
	secret, _, err := keys.Create(ctx, "ci", RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"d1", "d2", "d3", "d4"} {
		mustCreateProbed(t, a, name, "p", "10.0.0."+string(rune('1'+i))+":22", "none", nil)
	}
	mustCreate(t, a, "t1", "q", "10.0.1.1:22", nil)
	req := AcquireRequest{Selector: Selector{Pool: "p"}, Owner: "ci", Holder: "test"}

	// Each step runs right after every connection was cut. The pool is
	// warmed first so that it holds several idle connections to lose.
	step := func(what string, f func() error) {
		t.Helper()
		warm := make(chan struct{})
		for range 4 {
			go func() {
				_, _ = a.pool.Exec(ctx, "SELECT pg_sleep(0.01)")
				warm <- struct{}{}
			}()
		}
		for range 4 {
			<-warm
		}
		if n := dbtest.CutConnections(t, url); n == 0 {
			t.Fatalf("%s: no connection was cut", what)
		}
		if err := f(); err != nil {
			t.Errorf("%s after the connections were cut: %v", what, err)
		}
	}

	var lease, waited, probed, group Lease
	step("acquire", func() (err error) { lease, err = a.Acquire(ctx, req); return err })
	step("acquire with wait", func() (err error) {
		r := req
		r.Wait = 2 * time.Second
		waited, err = a.Acquire(ctx, r)
		return err
	})
	step("probed acquire", func() (err error) {
		probed, err = a.Acquire(ctx, AcquireRequest{Selector: Selector{Pool: "q"}, Owner: "ci"})
		return err
	})
	step("keyed acquire", func() error {
		r := req
		r.IdempotencyKey = "k1"
		_, _, err := a.AcquireOrReplay(ctx, r)
		return err
	})
	step("renew", func() error { _, err := a.Renew(ctx, lease.ID, time.Minute); return err })
	step("release", func() error { _, err := a.Release(ctx, lease.ID); return err })
	step("release own", func() error { _, err := a.ReleaseOwn(ctx, waited.ID, "ci"); return err })
	step("revoke", func() error { _, err := a.Revoke(ctx, probed.ID); return err })
	step("key lookup", func() error { _, err := keys.Authenticate(ctx, secret); return err })
	step("list leases", func() error { _, err := a.ListLeases(ctx, LeaseFilter{}); return err })
	step("get lease", func() error { _, err := a.GetLease(ctx, lease.ID); return err })
	step("list devices", func() error { _, err := a.ListDevices(ctx, DeviceFilter{}); return err })
	step("get device", func() error { _, err := a.GetDevice(ctx, "d1"); return err })
	step("pools", func() error { _, err := a.Pools(ctx); return err })
	step("queue", func() error { _, err := a.Queue(ctx, QueueFilter{}); return err })
	step("list keys", func() error { _, err := keys.List(ctx); return err })
	step("update device", func() error {
		addr := "10.0.1.2:22"
		_, err := a.UpdateDevice(ctx, "t1", DevicePatch{Reason: "test", Address: &addr})
		return err
	})
	step("delete device", func() error { return a.DeleteDevice(ctx, "t1", false) })
	step("group acquire", func() (err error) {
		r := req
		r.Count = 2
		group, err = a.Acquire(ctx, r)
		return err
	})
	if group.GroupID == nil {
		t.Fatal("the group acquire made no group")
	}
	step("renew group", func() error { _, err := a.RenewGroup(ctx, *group.GroupID, "ci", time.Minute); return err })
	step("end group", func() error { _, err := a.EndGroup(ctx, *group.GroupID, EndReleased); return err })
}
