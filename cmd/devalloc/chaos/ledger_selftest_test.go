//go:build chaos

package chaos

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	openapi_types "github.com/oapi-codegen/runtime/types"

	"github.com/devalloc/devalloc/httpapi/client"
)

// The ledger itself: a grant of a device whose previous lease was neither
// let go nor expired is reported, the same grants in order are not.
func TestChaosHarnessLedger(t *testing.T) {
	h := &harness{t: t, stats: newStats(), led: newLedger(), began: time.Now()}
	at := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	lease := func(token int64, acquired time.Time, ttl time.Duration) *client.Lease {
		return &client.Lease{
			ID: openapi_types.UUID(uuid.New()), Device: client.LeaseDevice{Name: "d1"},
			FencingToken: token, AcquiredAt: acquired, ExpiresAt: acquired.Add(ttl),
		}
	}
	g1 := h.led.record(h, lease(1, at, 3*time.Second), 1, 0)
	h.led.letGo(g1)
	g2 := h.led.record(h, lease(2, at.Add(time.Second), 3*time.Second), 2, 0) // after a release: fine
	h.led.abandon(g2)
	h.led.record(h, lease(3, at.Add(4*time.Second), 3*time.Second), 3, 0) // after g2 expired: fine
	if h.stats.nViolations != 0 {
		t.Fatalf("legal history reported: %v", h.stats.violations)
	}
	h.led.record(h, lease(4, at.Add(5*time.Second), 3*time.Second), 4, 0) // g3 still held
	if h.stats.nViolations != 1 || !strings.Contains(h.stats.violations[0], "TWO HOLDERS") {
		t.Fatalf("double holder not reported: %v", h.stats.violations)
	}
}
