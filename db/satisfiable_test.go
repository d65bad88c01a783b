package db

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestSatisfiableCache(t *testing.T) {
	var c satisfiableCache
	now := time.Now()
	pixel := Selector{Pool: "android", Labels: Labels{"model": "pixel"}}
	if c.fresh(pixel, now) {
		t.Fatal("fresh before anything was remembered")
	}
	c.remember(pixel, now)
	if !c.fresh(pixel, now.Add(satisfiableFor-time.Millisecond)) {
		t.Fatal("not fresh within the window")
	}
	if c.fresh(pixel, now.Add(satisfiableFor)) {
		t.Fatal("still fresh after the window")
	}
	if c.fresh(Selector{Pool: "android"}, now) {
		t.Fatal("another selector is fresh too")
	}
	for i := range satisfiableCacheMax + 1 {
		c.remember(Selector{Pool: fmt.Sprint(i)}, now)
	}
	if len(c.at) > satisfiableCacheMax {
		t.Fatalf("%d entries, bound %d", len(c.at), satisfiableCacheMax)
	}
}

// An unsatisfiable selector fails fast every time (it is never cached);
// a satisfiable one is asked about once per window, however many waits.
func TestSatisfiabilityAskedOncePerWindow(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", Labels{"model": "pixel"})
	for range 2 {
		if _, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab", Labels: Labels{"model": "nokia"}}, Wait: time.Second, Owner: "x"}); !errors.Is(err, ErrUnsatisfiable) {
			t.Fatalf("unsatisfiable selector: %v", err)
		}
	}
	mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	sel := Selector{Pool: "lab", Labels: Labels{"model": "pixel"}}
	if a.satisfiable.fresh(sel, time.Now()) {
		t.Fatal("fresh before any wait")
	}
	if _, err := a.Acquire(t.Context(), AcquireRequest{Selector: sel, Wait: 10 * time.Millisecond, Owner: "x"}); !errors.Is(err, ErrNoDevice) {
		t.Fatalf("wait with the device held: %v", err)
	}
	if !a.satisfiable.fresh(sel, time.Now()) {
		t.Fatal("a selector found satisfiable was not remembered")
	}
}
