//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devalloc/devalloc/db/dbtest/pgcluster"
	"github.com/devalloc/devalloc/httpapi/client"
)

// waitingOn is how many acquires wait at in (-1 if it cannot say).
func (h *harness) waitingOn(in *instance) int64 {
	ctx, cancel := context.WithTimeout(h.ctx, 2*time.Second)
	defer cancel()
	r, err := in.admin.ListPoolsWithResponse(ctx)
	if err != nil || r.JSON200 == nil {
		return -1
	}
	var n int64
	for _, p := range r.JSON200.Pools {
		n += p.Waiting
	}
	return n
}

// mustHold acquires a device of pool at in for the harness itself,
// retrying for up to 15 s.
func (h *harness) mustHold(in *instance, pool string, ttl int64) *heldLease {
	h.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if l := h.acquire(in, pool, 2*time.Second, ttl, "harness", 0, 0); l != nil {
			return l
		}
	}
	h.t.Fatalf("the harness could not acquire a device of pool %s at instance %d", pool, in.idx)
	return nil
}

// Kill -9 of instances in the middle of acquires, long-polls and probes
// (slow http devices keep acquire transactions open while they probe), and
// restarts on the same address. Clients of the killed instance see their
// connection drop and go elsewhere; leases granted but never delivered are
// reclaimed at expiry; nobody else ever holds a device twice.
func TestChaosKill9(t *testing.T) {
	h := newHarness(t, scenario{})
	h.addTCPDevices("dev", "farm", 5)
	h.addSlowDevices("slow", "farm", 2, 150*time.Millisecond)
	load := h.startLoad(loadSpec{clients: 18, longHoldPct: 5})
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	time.Sleep(3 * time.Second)
	end := time.Now().Add(21 * time.Second)
	for time.Now().Before(end) {
		in := h.insts[rng.IntN(len(h.insts))]
		waiting := h.waitingOn(in)
		pid := in.pid()
		if err := in.kill(); err != nil {
			t.Fatal(err)
		}
		h.fault("kill -9 instance %d (pid %d) with %d acquires waiting on it", in.idx, pid, waiting)
		time.Sleep(time.Second)
		if err := in.start(h.ctx); err != nil {
			h.violate("restart of instance %d after kill -9: %v", in.idx, err)
			break
		}
		h.fault("instance %d restarted (pid %d)", in.idx, in.pid())
		time.Sleep(time.Duration(2000+rng.IntN(2000)) * time.Millisecond)
	}
	load.finish()
	h.finish()
}

// pg_terminate_backend of every connection of the database, pools and
// LISTEN connections alike, under load. Requests caught by it fail cleanly
// (503 with Retry-After) or succeed on a retry; and a waiter parked on one
// instance is served within 3 s of a release on another, right after the
// termination (through the listener's reconnect and re-check).
func TestChaosTerminateBackends(t *testing.T) {
	h := newHarness(t, scenario{})
	h.addTCPDevices("dev", "farm", 5)
	h.addSlowDevices("slow", "farm", 1, 100*time.Millisecond)
	h.addTCPDevices("handoff", "handoff", 1)
	load := h.startLoad(loadSpec{clients: 15})
	rng := rand.New(rand.NewPCG(2, uint64(time.Now().UnixNano())))
	time.Sleep(2 * time.Second)

	terminate := func(why string) {
		ctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
		defer cancel()
		n, err := h.db.terminateAll(ctx)
		if err != nil {
			t.Fatalf("pg_terminate_backend: %v", err)
		}
		now := time.Now()
		h.dbFault(now, now.Add(time.Second))
		h.fault("pg_terminate_backend of all %d connections of the database (%s)", n, why)
	}

	// Hand-offs across a termination: the harness holds the one handoff
	// device at instance k, a waiter parks at instance k+1, every
	// connection is terminated, the harness releases, and the waiter must
	// have the device within 3 s.
	const handoffBound = 3 * time.Second
	var worst time.Duration
	for k := range h.insts {
		holderAt, waiterAt := h.insts[k], h.insts[(k+1)%len(h.insts)]
		held := h.mustHold(holderAt, "handoff", 30)
		type result struct {
			l  *heldLease
			at time.Time
		}
		got := make(chan result, 1)
		go func() {
			l := h.acquire(waiterAt, "handoff", 10*time.Second, 30, "handoff-waiter", 0, 0)
			got <- result{l, time.Now()}
		}()
		time.Sleep(700 * time.Millisecond)
		if n := h.waitingOn(waiterAt); n < 1 {
			h.note("hand-off %d: instance %d reported %d waiting before the termination", k, waiterAt.idx, n)
		}
		terminate(fmt.Sprintf("hand-off %d: waiter parked at instance %d", k, waiterAt.idx))
		time.Sleep(100 * time.Millisecond)
		h.release(held, rng)
		released := time.Now()
		r := <-got
		switch {
		case r.l == nil:
			h.violate("hand-off %d: the waiter at instance %d got no device after the release at instance %d following pg_terminate_backend (see its acquire outcome)",
				k, waiterAt.idx, holderAt.idx)
		default:
			lat := r.at.Sub(released)
			worst = max(worst, lat)
			if lat > handoffBound {
				h.violate("hand-off %d: the waiter at instance %d was served %v after the release (bound %v) following pg_terminate_backend",
					k, waiterAt.idx, lat.Round(time.Millisecond), handoffBound)
			}
			h.release(r.l, rng)
		}
		time.Sleep(time.Second)
	}
	h.note("hand-off after pg_terminate_backend: slowest waiter served %v after the release (bound %v)", worst.Round(time.Millisecond), handoffBound)

	for range 4 {
		terminate("under load")
		time.Sleep(time.Duration(2000+rng.IntN(1000)) * time.Millisecond)
	}
	load.finish()
	h.finish()
}

// readyWatch polls /readyz of every instance every 100 ms.
type readyWatch struct {
	mu      sync.Mutex
	samples map[int][]readySample
	stop    chan struct{}
	wg      sync.WaitGroup
}

type readySample struct {
	at   time.Time
	code int // 0: no answer
	took time.Duration
	err  string
}

func (h *harness) watchReady() *readyWatch {
	w := &readyWatch{samples: map[int][]readySample{}, stop: make(chan struct{})}
	for _, in := range h.insts {
		w.wg.Go(func() {
			for sleep(100*time.Millisecond, w.stop) {
				ctx, cancel := context.WithTimeout(h.ctx, 3*time.Second)
				start := time.Now()
				r, err := in.admin.ReadyzWithResponse(ctx)
				cancel()
				s := readySample{at: start, took: time.Since(start)}
				if err != nil {
					s.err = err.Error()
				} else {
					s.code = r.StatusCode()
				}
				w.mu.Lock()
				w.samples[in.idx] = append(w.samples[in.idx], s)
				w.mu.Unlock()
			}
		})
	}
	return w
}

func (w *readyWatch) finish() {
	close(w.stop)
	w.wg.Wait()
}

// firstAfter is the first sample of instance i at or after t whose code is
// code, and whether there is one.
func (w *readyWatch) firstAfter(i int, t time.Time, code int) (readySample, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.samples[i] {
		if !s.at.Before(t) && s.code == code {
			return s, true
		}
	}
	return readySample{}, false
}

// A restart of PostgreSQL itself (a private cluster: stop -m immediate,
// down 5 s, start). While it is down every instance's /readyz says 503
// within 3 s, and requests fail cleanly (503 with Retry-After, never a
// 500, never a hang); afterwards every instance is ready again and grants
// devices, without being restarted.
func TestChaosPostgresRestart(t *testing.T) {
	pc := pgcluster.Start(t)
	h := newHarness(t, scenario{serverURL: pc.URL})
	h.addTCPDevices("dev", "farm", 5)
	h.addSlowDevices("slow", "farm", 1, 100*time.Millisecond)
	pids := make([]int, len(h.insts))
	for i, in := range h.insts {
		pids[i] = in.pid()
	}
	load := h.startLoad(loadSpec{clients: 15})
	watch := h.watchReady()
	time.Sleep(5 * time.Second)

	ctx, cancel := context.WithTimeout(h.ctx, 2*time.Minute)
	defer cancel()
	stoppedAt := time.Now()
	if err := pc.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	h.fault("PostgreSQL stopped (pg_ctl stop -m immediate)")
	grantsBefore := h.stats.get("acquire", "201")
	time.Sleep(5 * time.Second)
	grantsDown := h.stats.get("acquire", "201") - grantsBefore
	startedAt := time.Now()
	if err := pc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h.fault("PostgreSQL started again (down %v)", startedAt.Sub(stoppedAt).Round(100*time.Millisecond))
	grantsAtStart := h.stats.get("acquire", "201")
	time.Sleep(10 * time.Second)
	load.finish()
	watch.finish()
	grantsAfter := h.stats.get("acquire", "201") - grantsAtStart

	const unreadyBound, readyBound = 3 * time.Second, 10 * time.Second
	allReady := startedAt
	for i, in := range h.insts {
		if s, ok := watch.firstAfter(i, stoppedAt, http.StatusServiceUnavailable); !ok || s.at.After(startedAt) {
			h.violate("instance %d never said 503 on /readyz while PostgreSQL was down", i)
		} else if d := s.at.Add(s.took).Sub(stoppedAt); d > unreadyBound {
			h.violate("instance %d said 503 on /readyz only %v after PostgreSQL stopped (bound %v)", i, d.Round(time.Millisecond), unreadyBound)
		} else {
			h.note("instance %d: /readyz 503 %v after PostgreSQL stopped", i, d.Round(time.Millisecond))
		}
		if s, ok := watch.firstAfter(i, startedAt, http.StatusOK); !ok {
			h.violate("instance %d never ready again after PostgreSQL restarted", i)
		} else {
			d := s.at.Add(s.took).Sub(startedAt)
			if d > readyBound {
				h.violate("instance %d ready again only %v after PostgreSQL started (bound %v)", i, d.Round(time.Millisecond), readyBound)
			}
			h.note("instance %d: /readyz 200 again %v after PostgreSQL started", i, d.Round(time.Millisecond))
			if t := s.at.Add(s.took); t.After(allReady) {
				allReady = t
			}
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
	h.dbFault(stoppedAt, allReady.Add(time.Second))
	h.note("grants: %d while PostgreSQL was down, %d in the 10 s after it started", grantsDown, grantsAfter)
	if grantsAfter < 20 {
		h.violate("only %d grants in the 10 s after PostgreSQL started: the instances did not recover", grantsAfter)
	}
	h.finish()
}

// Clients that vanish: mid-wait (the request is cancelled), mid-response
// (status read, body never: the lease is orphaned), and holders that stop
// renewing. Every orphaned or abandoned lease is reclaimed within TTL +
// the reaper's interval, no waiter is left behind (a per-key cap of 24
// waiting acquires would turn leaked waiters into 429s), and nobody ever
// gets a device someone still holds.
func TestChaosVanishingClients(t *testing.T) {
	h := newHarness(t, scenario{extraArgs: []string{"--max-waiting-per-key", "24"}})
	h.addTCPDevices("dev", "farm", 5)
	h.addSlowDevices("slow", "farm", 1, 100*time.Millisecond)
	load := h.startLoad(loadSpec{clients: 18, ttl: 2, vanishWaitPct: 25, vanishRespPct: 10, stopRenewPct: 10, longHoldPct: 10})
	time.Sleep(20 * time.Second)
	load.finish()
	if n := h.stats.total("acquire", "429"); n > 0 {
		h.violate("%d acquires refused 429 too-many-waiting with 18 clients and a cap of 24 per instance: vanished waiters still count", n)
	}
	h.finish()
}

// Devices whose probe hangs (an http device that accepts and never
// answers) or flaps (200 and 503 in turns of a second). Acquires stay
// bounded by the probe deadline, the other devices keep being handed out
// (every client gets some), and the bad devices do not thrash between
// offline and idle: each offline spell lasts at least the health backoff.
func TestChaosBadProbes(t *testing.T) {
	const probeTimeout = time.Second
	// An acquire may meet both hanging devices before a good one.
	h := newHarness(t, scenario{probeTimeout: probeTimeout, lateSlack: 2 * probeTimeout})
	h.addTCPDevices("dev", "farm", 5)
	hangProbes := []*atomic.Int64{{}, {}}
	for i, n := range hangProbes {
		addr, err := h.farm.hangDevice(n)
		if err != nil {
			t.Fatal(err)
		}
		h.addDevice(fmt.Sprintf("hang-%d", i+1), "farm", addr, "http")
	}
	flapProbes := []*atomic.Int64{{}, {}}
	for i, n := range flapProbes {
		addr, err := h.farm.flapDevice(time.Second, n)
		if err != nil {
			t.Fatal(err)
		}
		h.addDevice(fmt.Sprintf("flap-%d", i+1), "farm", addr, "http")
	}

	// Count each bad device's moves into offline (sampled every 100 ms;
	// an offline spell lasts at least the health backoff, 2 s).
	type track struct {
		state    string
		offlines int
	}
	tracks := map[string]*track{}
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for sleep(100*time.Millisecond, stop) {
			ctx, cancel := context.WithTimeout(h.ctx, 2*time.Second)
			rows, err := h.db.admin.Query(ctx, `SELECT name, state FROM devalloc.devices WHERE name LIKE 'hang-%' OR name LIKE 'flap-%'`)
			if err == nil {
				for rows.Next() {
					var name, state string
					if rows.Scan(&name, &state) != nil {
						break
					}
					tr := tracks[name]
					if tr == nil {
						tr = &track{}
						tracks[name] = tr
					}
					if state == "offline" && tr.state != "offline" {
						tr.offlines++
					}
					tr.state = state
				}
				rows.Close()
			}
			cancel()
		}
	})

	const duration = 25 * time.Second
	load := h.startLoad(loadSpec{clients: 18})
	began := time.Now()
	time.Sleep(duration)
	load.finish()
	close(stop)
	sampler.Wait()
	ran := time.Since(began)

	// At most one offline spell per health backoff (2 s), plus the first.
	spellBound := int(ran/(2*time.Second)) + 2
	for name, tr := range tracks {
		h.note("%s: %d moves to offline (bound %d), %s at the end", name, tr.offlines, spellBound, tr.state)
		if tr.offlines > spellBound {
			h.violate("%s moved to offline %d times in %v (bound %d): offline/idle thrash", name, tr.offlines, ran.Round(time.Second), spellBound)
		}
	}
	for i, n := range hangProbes {
		// Probed once at acquire, then by the health checker with backoff.
		h.note("hang-%d: %d probes in %v", i+1, n.Load(), ran.Round(time.Second))
		if got := n.Load(); got > int64(spellBound) {
			h.violate("hang-%d probed %d times in %v (bound %d)", i+1, got, ran.Round(time.Second), spellBound)
		}
		if tr := tracks[fmt.Sprintf("hang-%d", i+1)]; tr == nil || tr.state != "offline" {
			h.violate("hang-%d is not offline at the end", i+1)
		}
	}
	for i, n := range flapProbes {
		h.note("flap-%d: %d probes in %v", i+1, n.Load(), ran.Round(time.Second))
	}
	starved := 0
	for _, id := range load.ids {
		if h.stats.grantsOf(id) == 0 {
			starved++
		}
	}
	if starved > 0 {
		h.violate("%d of %d clients got no device in %v: starved", starved, len(load.ids), ran.Round(time.Second))
	}
	h.finish()
}

// Statement and lock timeouts inside the acquire transaction. The
// instances' sessions get lock_timeout 300 ms and statement_timeout 700 ms
// (through the database URL: devalloc sets its own session timeouts, which
// win over ALTER DATABASE ... SET). First a DBA session holds LOCK TABLE
// devalloc.leases IN EXCLUSIVE MODE for 3 s (grants, releases and the
// reaper hit lock_timeout), then a trigger makes every lease insert sleep
// 1.5 s for 3 s (grants hit statement_timeout). Each such request is
// answered 503 with Retry-After or succeeds on a retry within its wait,
// never 500, never late.
func TestChaosDBTimeouts(t *testing.T) {
	h := newHarness(t, scenario{
		urlParams:   "lock_timeout=300&statement_timeout=700",
		beforeStart: installSlowGrantTrigger,
	})
	// More devices than clients: there is always an idle one, so grants
	// (not only releases) run into the lock and the slow inserts.
	h.addTCPDevices("dev", "farm", 16)
	h.addSlowDevices("slow", "farm", 1, 100*time.Millisecond)
	load := h.startLoad(loadSpec{clients: 12})
	time.Sleep(4 * time.Second)
	ctx, cancel := context.WithTimeout(h.ctx, time.Minute)
	defer cancel()

	h.lockLeases(ctx, 3*time.Second, "lock_timeout 300ms")
	time.Sleep(3 * time.Second)

	before := h.snapshotAcquires()
	slowFrom := time.Now()
	if _, err := h.db.admin.Exec(ctx, `UPDATE chaos.knobs SET slow_grant_ms = 1500`); err != nil {
		t.Fatal(err)
	}
	h.fault("trigger: every lease insert sleeps 1.5s, for 3s (statement_timeout 700ms)")
	time.Sleep(3 * time.Second)
	if _, err := h.db.admin.Exec(ctx, `UPDATE chaos.knobs SET slow_grant_ms = 0`); err != nil {
		t.Fatal(err)
	}
	h.dbFault(slowFrom, time.Now())
	h.fault("trigger back to normal")
	h.note("acquire outcomes while lease inserts were slow (and 1 s after): %s", h.acquiresSince(before, time.Second))
	if logged := h.logCount("canceling statement due to statement timeout"); logged == 0 {
		h.note("no instance logged a statement timeout (the harness could not tell whether grants hit it)")
	}

	time.Sleep(4 * time.Second)
	load.finish()
	h.finish()
}

// A DBA's lock held longer than the instances' own lock_timeout (their
// defaults): LOCK TABLE devalloc.leases IN EXCLUSIVE MODE for 6 s under
// load. Acquires caught behind it must still be answered within their wait
// + 1 s (a clean 503 when the wait ends), releases answered 503 and
// retried, and nothing answers 500.
func TestChaosDBALockPastDefaults(t *testing.T) {
	h := newHarness(t, scenario{})
	// More devices than clients: grants, not only releases, meet the lock.
	h.addTCPDevices("dev", "farm", 16)
	load := h.startLoad(loadSpec{clients: 12})
	time.Sleep(3 * time.Second)
	ctx, cancel := context.WithTimeout(h.ctx, time.Minute)
	defer cancel()
	h.lockLeases(ctx, 6*time.Second, "the instances' default lock_timeout")
	time.Sleep(5 * time.Second)
	load.finish()
	h.finish()
}

// installSlowGrantTrigger adds a knob (chaos.knobs.slow_grant_ms) and a
// trigger that makes every lease insert sleep that long.
func installSlowGrantTrigger(h *harness) {
	ctx, cancel := context.WithTimeout(h.ctx, 30*time.Second)
	defer cancel()
	for _, sql := range []string{
		`CREATE SCHEMA chaos`,
		`CREATE TABLE chaos.knobs (slow_grant_ms int NOT NULL)`,
		`INSERT INTO chaos.knobs VALUES (0)`,
		`CREATE FUNCTION chaos.slow_grant() RETURNS trigger LANGUAGE plpgsql AS $$
		 DECLARE ms int;
		 BEGIN
		   SELECT slow_grant_ms INTO ms FROM chaos.knobs;
		   IF ms > 0 THEN PERFORM pg_sleep(ms / 1000.0); END IF;
		   RETURN NEW;
		 END $$`,
		`CREATE TRIGGER chaos_slow_grant BEFORE INSERT ON devalloc.leases FOR EACH ROW EXECUTE FUNCTION chaos.slow_grant()`,
	} {
		if _, err := h.db.admin.Exec(ctx, sql); err != nil {
			h.t.Fatalf("%s: %v", sql, err)
		}
	}
}

// lockLeases is a DBA session holding LOCK TABLE devalloc.leases IN
// EXCLUSIVE MODE for d: lease inserts and updates wait (reads do not).
func (h *harness) lockLeases(ctx context.Context, d time.Duration, against string) {
	h.t.Helper()
	before := h.snapshotAcquires()
	from := time.Now()
	tx, err := h.db.admin.Begin(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE devalloc.leases IN EXCLUSIVE MODE`); err != nil {
		h.t.Fatal(err)
	}
	h.fault("DBA session: LOCK TABLE devalloc.leases IN EXCLUSIVE MODE for %v (against %s)", d, against)
	// Fresh acquires (wait_seconds 2) while the lock is held: the load's
	// clients soon all sit in releases, so these are the ones whose grants
	// meet the lock. Each must be answered within its wait + 1 s.
	var probes sync.WaitGroup
	var mu sync.Mutex
	var took []string
	time.Sleep(200 * time.Millisecond)
	rng := rand.New(rand.NewPCG(4, uint64(time.Now().UnixNano())))
	for i := range 6 {
		in := h.insts[i%len(h.insts)]
		seed := rng.Uint64()
		probes.Go(func() {
			start := time.Now()
			l := h.acquire(in, "farm", 2*time.Second, 30, "lock-prober", 0, 0)
			mu.Lock()
			outcome := "no device"
			if l != nil {
				outcome = "201"
			}
			took = append(took, fmt.Sprintf("%s after %v", outcome, time.Since(start).Round(10*time.Millisecond)))
			mu.Unlock()
			if l != nil {
				h.release(l, rand.New(rand.NewPCG(seed, 5)))
			}
		})
	}
	time.Sleep(d - 200*time.Millisecond)
	if err := tx.Commit(ctx); err != nil {
		h.t.Fatal(err)
	}
	h.dbFault(from, time.Now())
	h.fault("lock released")
	probes.Wait()
	h.note("acquire outcomes while the leases table was locked (and until the probing acquires ended): %s", h.acquiresSince(before, 0))
	h.note("probing acquires (wait_seconds 2) sent during the lock: %s", strings.Join(took, "; "))
}

// logCount counts the instances' log lines containing every one of subs.
func (h *harness) logCount(subs ...string) int {
	n := 0
	for _, in := range h.insts {
		n += in.logCount(subs...)
	}
	return n
}

// snapshotAcquires copies the acquire outcome counts.
func (h *harness) snapshotAcquires() map[string]int {
	h.stats.mu.Lock()
	defer h.stats.mu.Unlock()
	out := map[string]int{}
	for k, v := range h.stats.counts["acquire"] {
		out[k] = v
	}
	return out
}

// acquiresSince waits settle, then renders the acquire outcomes counted
// since before.
func (h *harness) acquiresSince(before map[string]int, settle time.Duration) string {
	time.Sleep(settle)
	now := h.snapshotAcquires()
	var parts []string
	for k, v := range now {
		if d := v - before[k]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s: %d", k, d))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// An instance frozen (SIGSTOP) in the middle of acquire transactions that
// probe slow devices under their row locks, while the other instances keep
// serving (the freeze lands while it probes a "trap" device, so one of its
// transactions surely holds a row lock). PostgreSQL must end the frozen
// instance's open transactions (its
// idle_in_transaction_session_timeout: devalloc sets the probe timeout +
// 10 s) so that no device row stays locked: within 15 s of the freeze, none
// of its sessions is in a transaction and every idle device row can be
// locked. Thawed, the instance answers cleanly and recovers.
func TestChaosFreeze(t *testing.T) {
	const unlockBound = 15 * time.Second
	h := newHarness(t, scenario{idleInTxBound: unlockBound})
	h.addTCPDevices("dev", "farm", 3)
	h.addSlowDevices("slow", "farm", 3, 300*time.Millisecond)
	arrived := make(chan struct{}, 1)
	trapAddr, err := h.farm.trapDevice(800*time.Millisecond, arrived)
	if err != nil {
		t.Fatal(err)
	}
	h.addDevice("trap-1", "trap", trapAddr, "http")
	load := h.startLoad(loadSpec{clients: 15})
	time.Sleep(4 * time.Second)
	ctx, cancel := context.WithTimeout(h.ctx, time.Minute)
	defer cancel()

	// An acquire of the trap device at the victim: the moment its probe
	// arrives, the victim is inside the acquire transaction.
	victim := h.insts[1]
	pid := victim.pid()
	trapped := make(chan struct{})
	go func() {
		defer close(trapped)
		if l := h.acquire(victim, "trap", 2*time.Second, 30, "trap", 0, 0); l != nil {
			h.violate("the trap acquire at the frozen instance got a lease")
		}
	}()
	select {
	case <-arrived:
	case <-time.After(5 * time.Second):
		t.Fatal("the trap device was never probed")
	}
	if err := victim.freeze(); err != nil {
		t.Fatal(err)
	}
	frozenAt := time.Now()
	defer func() { <-trapped }()
	ports, err := localTCPPorts(pid)
	if err != nil {
		t.Fatalf("sockets of instance 1: %v", err)
	}
	busy := func() (string, int) {
		rows, err := h.db.admin.Query(ctx, `
			SELECT state, count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND client_port = ANY($1) GROUP BY state ORDER BY state`, ports)
		if err != nil {
			return err.Error(), -1
		}
		defer rows.Close()
		var parts []string
		n := 0
		for rows.Next() {
			var state *string
			var c int
			if rows.Scan(&state, &c) != nil {
				break
			}
			st := "?"
			if state != nil {
				st = *state
			}
			parts = append(parts, fmt.Sprintf("%d %s", c, st))
			if st != "idle" {
				n += c
			}
		}
		return strings.Join(parts, ", "), n
	}
	states, _ := busy()
	h.fault("SIGSTOP instance 1 (pid %d); its sessions: %s", pid, states)

	// The others keep serving for 8 s; then the load stops, so that only
	// the frozen instance can still hold device row locks.
	grantsBefore := h.stats.get("acquire", "201")
	time.Sleep(8 * time.Second)
	load.finish()
	h.note("freeze: %d grants by the other instances in the 8 s after SIGSTOP", h.stats.get("acquire", "201")-grantsBefore)

	var lastStates string
	var lockedNames []string
	for {
		states, inTx := busy()
		locked, names, err := h.lockedIdleDevices(ctx)
		lastStates, lockedNames = states, names
		if err == nil && inTx == 0 && locked == 0 {
			h.note("freeze: %v after SIGSTOP no session of instance 1 is in a transaction (%s) and every idle device row is free",
				time.Since(frozenAt).Round(100*time.Millisecond), states)
			break
		}
		if time.Since(frozenAt) > unlockBound {
			h.violate("%v after SIGSTOP of instance 1: its sessions: %s; idle device rows still locked: %v (want its transactions ended within %v)",
				time.Since(frozenAt).Round(100*time.Millisecond), lastStates, lockedNames, unlockBound)
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err := victim.thaw(); err != nil {
		t.Fatal(err)
	}
	h.fault("SIGCONT instance 1 after %v", time.Since(frozenAt).Round(100*time.Millisecond))
	load = h.startLoad(loadSpec{clients: 15})
	time.Sleep(8 * time.Second)
	load.finish()
	h.finish()
}

// localTCPPorts lists the local ports of pid's TCP sockets (from /proc).
func localTCPPorts(pid int) ([]int32, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	var ports []int32
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(b)) {
			f := strings.Fields(line)
			if len(f) < 10 || !inodes[f[9]] {
				continue
			}
			_, hexPort, ok := strings.Cut(f[1], ":")
			if !ok {
				continue
			}
			if p, err := strconv.ParseInt(hexPort, 16, 32); err == nil {
				ports = append(ports, int32(p))
			}
		}
	}
	return ports, nil
}

// Graceful shutdown (SIGTERM) of an instance with acquires waiting on it:
// each waiter is answered promptly (a clean 503 within 2 s, not held for
// the shutdown timeout and then cut), and the process exits soon after.
func TestChaosShutdownWithWaiters(t *testing.T) {
	h := newHarness(t, scenario{})
	h.addTCPDevices("dev", "farm", 3)
	rng := rand.New(rand.NewPCG(3, uint64(time.Now().UnixNano())))
	var held []*heldLease
	for range 3 {
		held = append(held, h.mustHold(h.insts[1], "farm", 60))
	}
	victim := h.insts[0]
	const waiters = 6
	type answer struct {
		at     time.Time
		status int
		label  string
		err    error
	}
	answers := make(chan answer, waiters)
	for range waiters {
		go func() {
			pool, wait, ttl := "farm", int64(20), int64(10)
			ctx, cancel := context.WithTimeout(h.ctx, 25*time.Second)
			defer cancel()
			r, err := victim.client.AcquireLeaseWithResponse(ctx, nil, client.AcquireLeaseRequest{Pool: &pool, WaitSeconds: &wait, TTLSeconds: &ttl})
			a := answer{at: time.Now(), err: err}
			if err == nil {
				a.status = r.StatusCode()
				if a.status != http.StatusCreated {
					a.label = h.checkProblem("acquire", victim, r.HTTPResponse, r.Body)
				} else {
					a.label = "201"
				}
			}
			answers <- a
		}()
	}
	time.Sleep(time.Second)
	h.note("shutdown: %d acquires waiting at instance 0 before SIGTERM", h.waitingOn(victim))
	sigterm := time.Now()
	took, exitErr := victim.terminate(20 * time.Second)
	h.fault("SIGTERM instance 0 (shutdown-timeout 5s) with %d waiters; it exited after %v (%v)", waiters, took.Round(time.Millisecond), exitErr)
	const answerBound, exitBound = 2 * time.Second, 3 * time.Second
	for range waiters {
		a := <-answers
		after := a.at.Sub(sigterm)
		switch {
		case a.err != nil:
			h.stats.count("shutdown", "connection error")
			h.violate("a waiter at the stopping instance got no answer (%v after SIGTERM): %v", after.Round(time.Millisecond), a.err)
		default:
			h.stats.count("shutdown", a.label)
			if a.status != http.StatusServiceUnavailable {
				h.violate("a waiter at the stopping instance got %s (want 503 with Retry-After)", a.label)
			}
			if after > answerBound {
				h.violate("a waiter at the stopping instance was answered %v after SIGTERM (bound %v)", after.Round(time.Millisecond), answerBound)
			}
		}
	}
	if took > exitBound {
		h.violate("the instance took %v to exit after SIGTERM with waiters (bound %v)", took.Round(time.Millisecond), exitBound)
	}
	if exitErr != nil {
		h.violate("the instance exited with %v after SIGTERM (want status 0)", exitErr)
	}
	for _, l := range held {
		h.release(l, rng)
	}
	h.finish()
}
