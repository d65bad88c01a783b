package rawsql

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/devalloc/devalloc/db/dbtest"
)

// TestNotify runs the three modes briefly. Notify fails when a release
// went unnotified, so a nil error means the listener heard of every one;
// Delivery must then hold a sample for every counted cycle at least.
func TestNotify(t *testing.T) {
	ctx := testContext(t)
	url := dbtest.NewDB(t)
	results, err := Notify(ctx, url, 4, 8, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != len(notifyModes) {
		t.Fatalf("%d results, want %d", len(results), len(notifyModes))
	}
	for i, r := range results {
		t.Logf("%-14s %7.0f cycles/s  delivery n=%d p50 %.2f ms p99 %.2f ms max %.2f ms",
			r.Mode, r.CyclesPerSec, r.Delivery.N, r.Delivery.P50, r.Delivery.P99, r.Delivery.Max)
		if r.Mode != notifyModes[i] {
			t.Errorf("result %d is %q, want %q", i, r.Mode, notifyModes[i])
		}
		if r.Clients != 4 || r.Seconds != 1 {
			t.Errorf("%s: clients %d seconds %v, want 4, 1", r.Mode, r.Clients, r.Seconds)
		}
		cycles := int(r.CyclesPerSec*r.Seconds + 0.5)
		if cycles == 0 {
			t.Errorf("%s: no cycles", r.Mode)
		}
		if r.Delivery.N < cycles {
			t.Errorf("%s: %d deliveries for %d cycles", r.Mode, r.Delivery.N, cycles)
		}
		if r.Releases < cycles || r.Notifications < 1 || r.Notifications > r.Releases ||
			(r.Mode != "coalesced" && r.Notifications != r.Releases) {
			t.Errorf("%s: %d releases, %d notifications", r.Mode, r.Releases, r.Notifications)
		}
	}
	assertNoRawSchemas(ctx, t, url)
}

// TestNotifyCutShort: a context that ends mid-run stops the clients, the
// notifiers and the listener, returns the context's error, and still drops
// the schema (TestMain checks that no goroutine is left).
func TestNotifyCutShort(t *testing.T) {
	url := dbtest.NewDB(t)
	ctx, cancel := context.WithTimeout(testContext(t), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := runNotifyMode(ctx, url, modeCoalesced, 4, 8, time.Minute)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want %v", err, context.DeadlineExceeded)
	}
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("took %v to stop", took)
	}
	assertNoRawSchemas(testContext(t), t, url)
}
