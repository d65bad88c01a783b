//go:build chaos

package chaos

import (
	"context"
	"math/rand/v2"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"
)

// Bounds of the failover scenario.
const (
	// failoverServeBound: every instance is ready again, and has granted a
	// device on the new primary, within this of the promotion (pg_ctl
	// promote -w returned). What it takes: the pool's next connect skips
	// the dead host and the read-only standby, the listener's backoff (at
	// most 2 s) and the re-check; the rest is room for a loaded machine.
	failoverServeBound = 10 * time.Second
	// failoverDetect is how long the primary stays dead before the standby
	// is promoted: a failover manager's detection time, short here.
	failoverDetect = 2 * time.Second
	// failoverTTL is the load's ttl_seconds.
	failoverTTL = 8
)

// failoverSpec is one run of the failover scenario.
type failoverSpec struct {
	// sync: the primary's synchronous_standby_names names the standby.
	sync bool
	// stall holds the primary's WAL stream this long before the kill (the
	// standby lags behind a congested link); 0: no stall.
	stall time.Duration
	// measureOnly reports losses without failing (asynchronous
	// replication is known to lose; the run says what).
	measureOnly bool
}

// The primary is killed under load (pg_ctl stop -m immediate) and its
// synchronous standby promoted; the instances reach the new primary through
// their multi-host DATABASE_URL (target_session_attrs=read-write), pool and
// LISTEN connection alike, without a restart. Every instance is ready and
// grants again within failoverServeBound of the promotion; every grant a
// client was told (201) is on the new primary with its fencing token, and
// no renew's 200 is taken back; no device had two holders across the
// failover (the ledger against the promoted database's lease history); and
// every acquire was answered 201 or a clean 503 with Retry-After, never 500.
func TestChaosFailover(t *testing.T) {
	runFailover(t, failoverSpec{sync: true})
}

// The same with asynchronous replication (synchronous_standby_names
// empty): a measurement, not a gate. It reports what the promoted server
// lost: grants told to clients, their fencing tokens handed out again,
// devices with two holders, renewals taken back. Not in make chaos (run it
// by name; DEVALLOC_FAILOVER_STALL=1s stalls the WAL stream that long
// before the kill, as a lagging standby would).
func TestFailoverAsync(t *testing.T) {
	spec := failoverSpec{measureOnly: true}
	if s := os.Getenv("DEVALLOC_FAILOVER_STALL"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("DEVALLOC_FAILOVER_STALL: %v", err)
		}
		spec.stall = d
	}
	runFailover(t, spec)
}

// Synchronous replication whose standby stalls (the WAL stream held for
// DEVALLOC_FAILOVER_STALL, default 3 s) before the primary is killed: a
// measurement of what a commit waiting for the standby does when its
// request gives up (PostgreSQL cancels the wait, and the transaction stays
// committed on the primary alone). Not in make chaos.
func TestFailoverSyncStalled(t *testing.T) {
	spec := failoverSpec{sync: true, stall: 3 * time.Second, measureOnly: true}
	if s := os.Getenv("DEVALLOC_FAILOVER_STALL"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("DEVALLOC_FAILOVER_STALL: %v", err)
		}
		spec.stall = d
	}
	runFailover(t, spec)
}

func runFailover(t *testing.T, spec failoverSpec) {
	pair := startReplicatedPair(t, spec.sync)
	h := newHarness(t, scenario{serverURL: pair.url, measureOnly: spec.measureOnly})
	h.addTCPDevices("dev", "farm", 8)
	// Idle until the promotion: then each instance's own acquires of them
	// show it granting on the new primary, whatever the load holds.
	h.addTCPDevices("probe", "probe", len(h.insts))
	pids := make([]int, len(h.insts))
	for i, in := range h.insts {
		pids[i] = in.pid()
	}
	mode := "asynchronous"
	if spec.sync {
		mode = "synchronous"
	}
	h.note("replication: %s (primary :%d, standby :%d); instances' DATABASE_URL %s", mode, pair.primary.Port, pair.standby.Port, withDatabase(pair.url, h.db.name))

	// A TTL longer than the outage (kill to promotion, ~3 s): the holder of
	// a grant the promoted server lost still holds it when the device is
	// granted again. Renewing holders (longHoldPct) put renew 200s in
	// flight at the kill.
	load := h.startLoad(loadSpec{clients: 15, ttl: failoverTTL, longHoldPct: 10})
	watch := h.watchReady()
	time.Sleep(4 * time.Second)
	ctx, cancel := context.WithTimeout(h.ctx, 2*time.Minute)
	defer cancel()

	lastFrom := time.Now().Add(-time.Second)
	if spec.stall > 0 {
		lastFrom = time.Now()
		pair.proxy.stall()
		h.fault("WAL stream to the standby stalled for %v", spec.stall)
		time.Sleep(spec.stall)
	}
	before := h.snapshotAcquires()
	grantsBefore := h.stats.get("acquire", "201")
	killedAt := time.Now()
	if err := pair.killPrimary(ctx); err != nil {
		t.Fatal(err)
	}
	pair.proxy.partition()
	h.fault("primary killed (pg_ctl stop -m immediate) after %d grants", grantsBefore)
	time.Sleep(failoverDetect)
	if err := pair.promote(ctx); err != nil {
		t.Fatal(err)
	}
	promotedAt := time.Now()
	h.fault("standby promoted (pg_ctl promote -w), %v after the kill", promotedAt.Sub(killedAt).Round(10*time.Millisecond))
	grantsAtPromotion := h.stats.get("acquire", "201")
	firstGrants := h.probeGrants(promotedAt)
	time.Sleep(time.Until(promotedAt.Add(12 * time.Second)))
	load.finish()
	watch.finish()
	h.note("acquire outcomes from the kill on: %s", h.acquiresSince(before, 0))
	h.note("grants: %d while no primary was reachable (kill to promotion), %d in the 12 s after the promotion",
		grantsAtPromotion-grantsBefore, h.stats.get("acquire", "201")-grantsAtPromotion)

	allReady := h.checkServingAgain(watch, promotedAt, pids, firstGrants)
	h.dbFault(killedAt, allReady.Add(time.Second))
	h.checkFailoverLoss(ctx, lastFrom, killedAt)
	h.finish()
}

// probeGrants asks every instance, from the promotion on, for a device of
// the "probe" pool (wait 1 s) until it grants one (released at once) or
// failoverServeBound + 5 s have passed; it returns when each instance
// answered its first 201 (zero: never).
func (h *harness) probeGrants(promotedAt time.Time) []time.Time {
	first := make([]time.Time, len(h.insts))
	var wg sync.WaitGroup
	for i, in := range h.insts {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), uint64(promotedAt.UnixNano())))
			for time.Since(promotedAt) < failoverServeBound+5*time.Second {
				if l := h.acquire(in, "probe", time.Second, 10, "failover-probe", 0, 0); l != nil {
					first[i] = time.Now()
					h.release(l, rng)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	return first
}

// checkServingAgain: every instance, without a restart, says 200 on
// /readyz and grants a device on the new primary within
// failoverServeBound of the promotion, and /readyz always answered. It
// returns when the last instance was ready.
func (h *harness) checkServingAgain(watch *readyWatch, promotedAt time.Time, pids []int, firstGrant []time.Time) time.Time {
	allReady := promotedAt
	for i, in := range h.insts {
		if s, ok := watch.firstAfter(i, promotedAt, http.StatusOK); !ok {
			h.violate("instance %d never ready again after the promotion", i)
		} else {
			at := s.at.Add(s.took)
			d := at.Sub(promotedAt)
			if d > failoverServeBound {
				h.violate("instance %d ready again only %v after the promotion (bound %v)", i, d.Round(time.Millisecond), failoverServeBound)
			}
			h.note("instance %d: /readyz 200 %v after the promotion", i, d.Round(time.Millisecond))
			if at.After(allReady) {
				allReady = at
			}
		}
		switch g := firstGrant[i]; {
		case g.IsZero():
			h.violate("instance %d granted no device after the promotion", i)
		case g.Sub(promotedAt) > failoverServeBound:
			h.violate("instance %d granted its first device on the new primary %v after the promotion (bound %v)",
				i, g.Sub(promotedAt).Round(time.Millisecond), failoverServeBound)
		default:
			h.note("instance %d: first grant of the probe pool on the new primary %v after the promotion", i, g.Sub(promotedAt).Round(time.Millisecond))
		}
		watch.mu.Lock()
		for _, s := range watch.samples[i] {
			if s.code == 0 {
				h.violate("instance %d: /readyz gave no answer within 3s at +%.1fs: %s", i, s.at.Sub(h.began).Seconds(), s.err)
			}
		}
		watch.mu.Unlock()
		if in.pid() != pids[i] {
			h.violate("instance %d was restarted (pid %d, was %d)", i, in.pid(), pids[i])
		}
	}
	return allReady
}
