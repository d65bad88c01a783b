package db

import (
	"context"
	"errors"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devalloc/devalloc/db/probe"
)

// countingProber passes every probe and counts them.
type countingProber struct{ n atomic.Int64 }

func (p *countingProber) Probe(ctx context.Context, _ probe.Kind, _ string) error {
	p.n.Add(1)
	return ctx.Err()
}

// A device whose probe is "none" is granted by the one statement: the
// lease carries the device's details, and the database agrees.
func TestUnprobedAcquireGrantsInOneStatement(t *testing.T) {
	p := &countingProber{}
	a := newAllocator(t, newDB(t), testConfig(p))
	mustCreateProbed(t, a, "sim-1", "sims", "sim:1", "none", Labels{"os": "android"})
	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "sims", Labels: Labels{"os": "android"}}, TTL: time.Minute, Holder: "job 7"})
	if lease.Device.Name != "sim-1" || lease.Device.Address != "sim:1" || lease.Device.Labels["os"] != "android" ||
		lease.Holder != "job 7" || lease.Owner != "tester" || lease.FencingToken != 1 {
		t.Fatalf("lease = %+v", lease)
	}
	if d := lease.ExpiresAt.Sub(lease.AcquiredAt); d != time.Minute {
		t.Errorf("lease lasts %v, want 1m", d)
	}
	stored, err := a.GetLease(t.Context(), lease.ID)
	if err != nil || !reflect.DeepEqual(stored.Device, lease.Device) || !stored.AcquiredAt.Equal(lease.AcquiredAt) || !stored.Active() {
		t.Fatalf("stored lease = %+v, %v; want %+v", stored, err, lease)
	}
	if d := mustDevice(t, a, "sim-1"); d.State != StateLeased || d.LeaseID == nil || *d.LeaseID != lease.ID {
		t.Fatalf("device = %+v", d)
	}
	if n := p.n.Load(); n != 0 {
		t.Errorf("%d probes of a device whose probe is none", n)
	}
	if _, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "sims"}, Owner: "x"}); !errors.Is(err, ErrNoDevice) {
		t.Fatalf("second acquire: %v, want ErrNoDevice", err)
	}
}

// A pool mixing devices that need probes and devices that do not: each
// device is probed exactly when its probe is not "none", whichever path
// the acquire took.
func TestMixedPoolProbesExactlyTheDevicesThatNeedIt(t *testing.T) {
	p := &countingProber{}
	a := newAllocator(t, newDB(t), testConfig(p))
	// Created in this order, so they are picked in this order.
	mustCreateProbed(t, a, "board", "mixed", "b:1", "tcp", nil)
	mustCreateProbed(t, a, "sim", "mixed", "s:1", "none", nil)
	mustCreateProbed(t, a, "board-2", "mixed", "b:2", "tcp", nil)
	for i, want := range []struct {
		device string
		probes int64
	}{{"board", 1}, {"sim", 1}, {"board-2", 2}} {
		lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "mixed"}})
		if lease.Device.Name != want.device || p.n.Load() != want.probes {
			t.Fatalf("acquire %d: got %s after %d probes, want %s after %d", i, lease.Device.Name, p.n.Load(), want.device, want.probes)
		}
	}
}

// With a freshness window, a device released by a holder within it is
// granted without a probe (in one statement); a device never leased, or
// released longer ago, is probed.
func TestProbeFreshnessSkipsTheProbeOfARecentlyReleasedDevice(t *testing.T) {
	p := &countingProber{}
	cfg := testConfig(p)
	cfg.ProbeFreshness = time.Hour
	a := newAllocator(t, newDB(t), cfg)
	mustCreateProbed(t, a, "board", "lab", "b:1", "tcp", nil)
	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	if p.n.Load() != 1 {
		t.Fatalf("a device never leased was probed %d times, want 1", p.n.Load())
	}
	if _, err := a.Release(t.Context(), lease.ID); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		lease = mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
		if _, err := a.Release(t.Context(), lease.ID); err != nil {
			t.Fatal(err)
		}
	}
	if p.n.Load() != 1 {
		t.Fatalf("%d probes; a device released within the window needs none", p.n.Load())
	}

	// Outside the window (both since the release and since the probe), it
	// is probed again.
	if _, err := a.pool.Exec(t.Context(),
		`UPDATE devalloc.devices SET idle_since = idle_since - interval '2 hours', last_probe_at = last_probe_at - interval '2 hours'`); err != nil {
		t.Fatal(err)
	}
	mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	if p.n.Load() != 2 {
		t.Fatalf("%d probes; a device released outside the window must be probed", p.n.Load())
	}
}

// Without a freshness window (the default) every acquire of a probed device
// probes it, however recently it was released.
func TestWithoutFreshnessEveryAcquireProbes(t *testing.T) {
	p := &countingProber{}
	a := newAllocator(t, newDB(t), testConfig(p))
	mustCreateProbed(t, a, "board", "lab", "b:1", "tcp", nil)
	for i := range 3 {
		lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
		if _, err := a.Release(t.Context(), lease.ID); err != nil {
			t.Fatal(err)
		}
		if p.n.Load() != int64(i+1) {
			t.Fatalf("after %d acquires, %d probes", i+1, p.n.Load())
		}
	}
}
