package db

import (
	"errors"
	"testing"
	"time"
)

func drainPatch(on bool) DevicePatch { return DevicePatch{Drain: &on} }

// A drained leased device keeps its holder and goes to maintenance, not
// idle, when the lease ends, by release or by expiry; nobody waiting gets
// it. Undrain puts it back.
func TestDrainTakesALeasedDeviceOutWhenItsLeaseEnds(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	for _, end := range []string{"release", "expiry"} {
		ttl := time.Minute
		if end == "expiry" {
			ttl = 50 * time.Millisecond
		}
		lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, TTL: ttl})
		d, err := a.UpdateDevice(t.Context(), "d1", drainPatch(true))
		if err != nil || d.State != StateLeased || !d.Drain {
			t.Fatalf("%s: drain of the leased device: %+v, %v", end, d, err)
		}
		waiting := make(chan error, 1)
		go func() {
			_, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 500 * time.Millisecond, Owner: "w"})
			waiting <- err
		}()
		waitFor(t, "the waiter to queue", func() bool { return a.Hub().Waiting("lab") == 1 })
		if end == "release" {
			if _, err := a.Release(t.Context(), lease.ID); err != nil {
				t.Fatal(err)
			}
		} else {
			time.Sleep(100 * time.Millisecond)
			if n := a.reap(t.Context()); n != 1 {
				t.Fatalf("reaped %d", n)
			}
		}
		if err := <-waiting; !errors.Is(err, ErrNoDevice) {
			t.Fatalf("%s: the waiter got %v, want no device (the drained one is not for it)", end, err)
		}
		d = mustDevice(t, a, "d1")
		if d.State != StateMaintenance || d.Drain || d.LeaseID != nil || d.StateReason == "" {
			t.Fatalf("%s: device after its lease ended: %+v", end, d)
		}
		if d, err = a.UpdateDevice(t.Context(), "d1", drainPatch(false)); err != nil || d.State != StateIdle {
			t.Fatalf("%s: undrain: %+v, %v", end, d, err)
		}
	}
}

// Drain of a device that is not leased is maintenance at once; undrain of a
// leased drained device cancels the drain.
func TestDrainOfAnIdleDeviceAndUndrainOfALeasedOne(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	d, err := a.UpdateDevice(t.Context(), "d1", DevicePatch{Drain: ptr(true), Reason: "new cable"})
	if err != nil || d.State != StateMaintenance || d.StateReason != "new cable" || d.Drain {
		t.Fatalf("drain of an idle device: %+v, %v", d, err)
	}
	if d, err = a.UpdateDevice(t.Context(), "d1", drainPatch(false)); err != nil || d.State != StateIdle {
		t.Fatalf("undrain: %+v, %v", d, err)
	}
	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	if _, err := a.UpdateDevice(t.Context(), "d1", drainPatch(true)); err != nil {
		t.Fatal(err)
	}
	if d, err = a.UpdateDevice(t.Context(), "d1", drainPatch(false)); err != nil || d.Drain || d.State != StateLeased {
		t.Fatalf("undrain of a leased drained device: %+v, %v", d, err)
	}
	if _, err := a.Release(t.Context(), lease.ID); err != nil {
		t.Fatal(err)
	}
	if d := mustDevice(t, a, "d1"); d.State != StateIdle {
		t.Fatalf("after the release: %+v", d)
	}
}
