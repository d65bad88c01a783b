//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/devalloc/devalloc/httpapi/client"
)

// kill -9 of an instance with requests waiting in the line: nobody could
// answer them, so they are never handed a device. A release skips them and
// serves the live waiter behind them, the next release leaves its device
// idle, and the dead instance's rows leave the line once it has been
// silent for three heartbeats.
func TestChaosKilledInstanceWaitersNeverServed(t *testing.T) {
	h := newHarness(t, scenario{extraArgs: []string{"--heartbeat-interval", "1s"}})
	h.addTCPDevices("line", "line", 2)
	rng := rand.New(rand.NewPCG(4, uint64(time.Now().UnixNano())))
	holdAt, victim, liveAt := h.insts[1], h.insts[0], h.insts[2]
	held := []*heldLease{h.mustHold(holdAt, "line", 60), h.mustHold(holdAt, "line", 60)}

	const doomed = 4
	for i := range doomed {
		go func() {
			pool, wait, ttl, holder := "line", int64(25), int64(60), fmt.Sprintf("doomed-%d", i)
			ctx, cancel := context.WithTimeout(h.ctx, 30*time.Second)
			defer cancel()
			// The connection drops with the instance; the answer does not
			// matter, only that no lease is ever granted to this request.
			_, _ = victim.client.AcquireLeaseWithResponse(ctx, nil, client.AcquireLeaseRequest{
				Pool: &pool, WaitSeconds: &wait, TTLSeconds: &ttl, Holder: &holder,
			})
		}()
	}
	h.waitForLine(doomed)
	liveGot := make(chan *heldLease, 1)
	go func() { liveGot <- h.acquire(liveAt, "line", 20*time.Second, 60, "live", 0, 0) }()
	h.waitForLine(doomed + 1)

	pid := victim.pid()
	if err := victim.kill(); err != nil {
		t.Fatal(err)
	}
	h.fault("kill -9 instance %d (pid %d) with %d requests in line", victim.idx, pid, doomed)

	h.release(held[0], rng)
	var live *heldLease
	select {
	case live = <-liveGot:
		if live == nil {
			h.violate("the live waiter behind the dead instance's got no device")
		}
	case <-time.After(10 * time.Second):
		h.violate("the live waiter behind the dead instance's was not served within 10 s of a release")
	}
	h.release(held[1], rng)
	h.expectNoDoomedLease()
	deadline := time.Now().Add(15 * time.Second)
	for h.lineRows() > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if n := h.lineRows(); n > 0 {
		h.violate("%d rows of the dead instance still in line 15 s after the kill", n)
	} else {
		h.note("the dead instance's rows left the line")
	}
	h.expectNoDoomedLease()
	if err := victim.start(h.ctx); err != nil {
		t.Fatal(err)
	}
	if live != nil {
		h.release(live, rng)
	}
	h.finish()
}

// waitForLine waits until the line table holds n rows.
func (h *harness) waitForLine(n int) {
	h.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for h.lineRows() != n {
		if time.Now().After(deadline) {
			h.t.Fatalf("the line never reached %d requests (has %d)", n, h.lineRows())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lineRows counts devalloc.waiters rows (dead instances' included).
func (h *harness) lineRows() int {
	ctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
	defer cancel()
	var n int
	if err := h.db.admin.QueryRow(ctx, `SELECT count(*) FROM devalloc.waiters`).Scan(&n); err != nil {
		h.t.Fatalf("count the line: %v", err)
	}
	return n
}

// expectNoDoomedLease: no lease was ever granted to the killed instance's
// requests.
func (h *harness) expectNoDoomedLease() {
	ctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
	defer cancel()
	var n int
	if err := h.db.admin.QueryRow(ctx, `SELECT count(*) FROM devalloc.leases WHERE holder LIKE 'doomed-%'`).Scan(&n); err != nil {
		h.t.Fatalf("count leases: %v", err)
	}
	if n > 0 {
		h.violate("%d leases granted to requests of the killed instance", n)
	}
}
