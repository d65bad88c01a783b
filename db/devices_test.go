package db

import (
	"errors"
	"testing"
	"time"
)

func ptr[T any](v T) *T { return &v }

func TestCreateDuplicateDevice(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "x", "p", "h:1", nil)
	if _, err := a.CreateDevice(t.Context(), DeviceSpec{Name: "x", Pool: "q", Address: "h:2", Probe: "none"}); !errors.Is(err, ErrDeviceExists) {
		t.Fatalf("err = %v, want ErrDeviceExists", err)
	}
}

func TestMaintenanceTakesADeviceOutOfRotationAndBack(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "x", "p", "h:1", nil)
	d, err := a.UpdateDevice(t.Context(), "x", DevicePatch{State: ptr(StateMaintenance), Reason: "reflashing"})
	if err != nil || d.State != StateMaintenance || d.StateReason != "reflashing" {
		t.Fatalf("update = %+v, %v", d, err)
	}
	if _, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "p"}, Owner: "o"}); !errors.Is(err, ErrNoDevice) {
		t.Fatalf("acquire during maintenance: %v, want ErrNoDevice", err)
	}

	// A waiter is woken when maintenance ends.
	got := make(chan error, 1)
	go func() {
		_, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "p"}, Wait: 10 * time.Second, Owner: "o"})
		got <- err
	}()
	awaitJoin(t, a, "o")
	if _, err := a.UpdateDevice(t.Context(), "x", DevicePatch{State: ptr(StateIdle)}); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if _, err := a.UpdateDevice(t.Context(), "x", DevicePatch{State: ptr(StateMaintenance)}); !errors.Is(err, ErrDeviceLeased) {
		t.Fatalf("maintenance of a leased device: %v, want ErrDeviceLeased", err)
	}
}

func TestUpdateDeviceSpec(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "x", "p", "h:1", Labels{"a": "1"})
	d, err := a.UpdateDevice(t.Context(), "x", DevicePatch{Labels: &Labels{"b": "2"}, Address: ptr("h:9"), Probe: ptr("http")})
	if err != nil || d.Labels["b"] != "2" || len(d.Labels) != 1 || d.Address != "h:9" || d.Probe != "http" {
		t.Fatalf("update = %+v, %v", d, err)
	}
	if _, err := a.UpdateDevice(t.Context(), "nope", DevicePatch{Address: ptr("h:9")}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update of a missing device: %v", err)
	}
}

func TestDeleteDevice(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "x", "p", "h:1", nil)
	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "p"}})
	if err := a.DeleteDevice(t.Context(), "x", false); !errors.Is(err, ErrDeviceLeased) {
		t.Fatalf("delete of a leased device: %v, want ErrDeviceLeased", err)
	}
	if err := a.DeleteDevice(t.Context(), "x", true); err != nil {
		t.Fatalf("forced delete: %v", err)
	}
	if _, err := a.GetDevice(t.Context(), "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("device still there: %v", err)
	}
	ended, err := a.GetLease(t.Context(), lease.ID)
	if err != nil || ended.EndReason != EndDeviceRemoved || ended.Device.Name != "x" {
		t.Fatalf("lease history after delete = %+v, %v", ended, err)
	}
	if err := a.DeleteDevice(t.Context(), "x", false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestPools(t *testing.T) {
	prober := &fakeProber{}
	a := newAllocator(t, newDB(t), testConfig(prober))
	mustCreate(t, a, "a1", "a", "h:1", nil)
	mustCreate(t, a, "a2", "a", "h:2", nil)
	mustCreate(t, a, "b1", "b", "h:3", nil)
	mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "a"}})
	if _, err := a.UpdateDevice(t.Context(), "b1", DevicePatch{State: ptr(StateMaintenance)}); err != nil {
		t.Fatal(err)
	}
	pools, err := a.Pools(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := []PoolSummary{{Name: "a", Idle: 1, Leased: 1}, {Name: "b", Maintenance: 1}}
	if len(pools) != 2 || pools[0] != want[0] || pools[1] != want[1] {
		t.Fatalf("pools = %+v, want %+v", pools, want)
	}
}

// A forced delete of a leased device ends the lease and removes the
// device; nobody in line is handed it on the way.
func TestForcedDeleteOfALeasedDeviceHandsItToNobody(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "x", "lab", "h:1", nil)
	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	waiting := goAcquire(t.Context(), a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", Wait: 2 * time.Second})
	awaitJoin(t, a, "w")
	if err := a.DeleteDevice(t.Context(), "x", true); err != nil {
		t.Fatalf("forced delete of a leased device: %v", err)
	}
	if _, err := a.GetDevice(t.Context(), "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("device still there: %v", err)
	}
	ended, err := a.GetLease(t.Context(), lease.ID)
	if err != nil || ended.Active() || ended.EndReason != EndDeviceRemoved {
		t.Fatalf("the holder's lease after the delete: %+v, %v", ended, err)
	}
	if r := <-waiting; r.err == nil {
		t.Fatalf("the waiter was handed %+v", r.lease)
	}
	var n int
	if err := a.pool.QueryRow(t.Context(), `SELECT count(*) FROM devalloc.leases`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d leases (%v), want only the holder's", n, err)
	}
}
