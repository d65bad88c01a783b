package db

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// The pick is least recently released first among the devices that fit,
// wherever they are in the idle line: at its front, or behind many longer
// idle devices that do not fit (reached through the label index).
func TestPickTakesTheLongestIdleFittingDevice(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	// 100 long-idle devices that do not fit, then 3 that do, in idle order.
	for i := range 100 {
		mustCreateProbed(t, a, fmt.Sprintf("other-%03d", i), "farm", "x", "none", Labels{"model": "old"})
	}
	for i := range 3 {
		mustCreateProbed(t, a, fmt.Sprintf("pixel-%d", i), "farm", "x", "none", Labels{"model": "pixel"})
	}
	// Spread idle_since in creation order, so the line is unambiguous.
	if _, err := a.pool.Exec(t.Context(),
		`UPDATE devalloc.devices SET idle_since = now() - make_interval(secs => 1000 - id)`); err != nil {
		t.Fatal(err)
	}
	pixel := AcquireRequest{Selector: Selector{Pool: "farm", Labels: Labels{"model": "pixel"}}, TTL: time.Minute}
	// Cycling through the fitting devices keeps LRU order, though each
	// release sends the device to the back of the line.
	for round, want := range []string{"pixel-0", "pixel-1", "pixel-2", "pixel-0", "pixel-1"} {
		lease := mustAcquire(t, a, pixel)
		if lease.Device.Name != want {
			t.Fatalf("round %d: picked %s, want %s", round, lease.Device.Name, want)
		}
		if _, err := a.Release(t.Context(), lease.ID); err != nil {
			t.Fatal(err)
		}
	}
	// All three held: nothing fits, though 100 devices are idle.
	for range 3 {
		mustAcquire(t, a, pixel)
	}
	if _, err := a.Acquire(t.Context(), AcquireRequest{Selector: pixel.Selector, Owner: "x"}); !errors.Is(err, ErrNoDevice) {
		t.Fatalf("acquire with every fitting device held: %v, want ErrNoDevice", err)
	}
	// Any device: the front of the line.
	if lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "farm"}}); lease.Device.Name != "other-000" {
		t.Fatalf("unlabeled pick = %s, want other-000", lease.Device.Name)
	}
}

// When many devices at the front of the line fit, the pick is the first of
// them that is not locked by another acquire.
func TestPickSkipsLockedDevicesAtTheFront(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	for i := range 20 {
		mustCreateProbed(t, a, fmt.Sprintf("d-%02d", i), "farm", "x", "none", Labels{"kind": "board"})
	}
	if _, err := a.pool.Exec(t.Context(),
		`UPDATE devalloc.devices SET idle_since = now() - make_interval(secs => 1000 - id)`); err != nil {
		t.Fatal(err)
	}
	// Another session locks the first 10, as 10 acquires in flight would.
	tx, err := a.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(t.Context()) //nolint:errcheck // test cleanup
	if _, err := tx.Exec(t.Context(),
		`SELECT id FROM devalloc.devices WHERE name < 'd-10' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	for _, sel := range []Selector{{Pool: "farm"}, {Pool: "farm", Labels: Labels{"kind": "board"}}} {
		lease := mustAcquire(t, a, AcquireRequest{Selector: sel})
		if lease.Device.Name < "d-10" {
			t.Fatalf("selector %+v picked locked device %s", sel, lease.Device.Name)
		}
	}
}

// Every fitting device at the front of the line is locked by acquires in
// flight: the pick finds one further back instead of answering "nothing".
func TestPickLooksPastALockedFront(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	for i := range 70 {
		mustCreateProbed(t, a, fmt.Sprintf("d-%02d", i), "farm", "x", "none", Labels{"kind": "board"})
	}
	if _, err := a.pool.Exec(t.Context(),
		`UPDATE devalloc.devices SET idle_since = now() - make_interval(secs => 1000 - id)`); err != nil {
		t.Fatal(err)
	}
	tx, err := a.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(t.Context()) //nolint:errcheck // test cleanup
	if _, err := tx.Exec(t.Context(), `SELECT id FROM devalloc.devices WHERE name < 'd-64' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "farm", Labels: Labels{"kind": "board"}}})
	if lease.Device.Name != "d-64" {
		t.Fatalf("picked %s, want d-64 (the first unlocked one)", lease.Device.Name)
	}
}
