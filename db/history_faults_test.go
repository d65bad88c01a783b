package db

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/probe"
)

// The history checker's faults (see TestHistoryLinearizable): what a farm's
// database and network do to the instances while clients are served.

func (r *histRun) fault(kind string) {
	v, _ := r.faults.LoadOrStore(kind, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

func (r *histRun) faultSummary() string {
	s := ""
	r.faults.Range(func(k, v any) bool {
		s += fmt.Sprintf("%s %d, ", k, v.(*atomic.Int64).Load())
		return true
	})
	return s
}

// injectFaults runs the seeded fault schedule until the run ends: a DBA's
// table lock for a few hundred ms (mostly on leases, where renews, releases
// and the reaper meet), every connection of the database terminated, a
// connection cut just after a statement went out (the statement runs, its
// answer is lost), a probed device dying for a while, and once, mid-run, an
// instance killed and a fresh one started in its place; on a private
// cluster also PostgreSQL restarted (once at three fifths of the run, and
// now and then besides in long runs).
func (r *histRun) injectFaults(rng *rand.Rand, duration time.Duration, cfg Config) {
	killAt := time.Now().Add(duration * 2 / 5)
	restartAt := time.Now().Add(duration * 3 / 5)
	killed, restarted := false, false
	var flaps sync.WaitGroup
	defer flaps.Wait()
	for time.Now().Before(r.end) {
		sleepFor(time.Duration(400+rng.IntN(800)) * time.Millisecond)
		switch {
		case !killed && time.Now().After(killAt):
			killed = true
			r.killInstance(rng, cfg)
			continue
		case r.cluster != nil && !restarted && time.Now().After(restartAt):
			restarted = true
			r.restartPostgres(rng)
			continue
		}
		switch p := rng.IntN(100); {
		case p < 40:
			r.dbaLock("devalloc.leases", time.Duration(150+rng.IntN(450))*time.Millisecond)
		case p < 47:
			r.dbaLock([]string{"devalloc.devices", "devalloc.waiters"}[rng.IntN(2)], time.Duration(100+rng.IntN(300))*time.Millisecond)
		case p < 60:
			r.terminateAll("")
			r.fault("terminate every connection")
		case p < 72:
			r.cutMidStatement(rng)
		case p < 74 && r.cluster != nil && duration > 30*time.Second:
			r.restartPostgres(rng)
		default:
			addr := fmt.Sprintf("h:%d", histDevices-1-rng.IntN(4))
			down := time.Duration(300+rng.IntN(700)) * time.Millisecond
			r.prober.setDead(addr, true)
			r.fault("device fails its probes")
			flaps.Add(1)
			go func() {
				defer flaps.Done()
				time.Sleep(down)
				r.prober.setDead(addr, false)
			}()
		}
	}
}

// adminConn is a connection of the test's own, outside every instance.
func (r *histRun) adminConn() (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return pgx.Connect(ctx, r.url)
}

// dbaLock holds LOCK TABLE table IN EXCLUSIVE MODE for d: reads go on,
// every write to the table waits.
func (r *histRun) dbaLock(table string, d time.Duration) {
	conn, err := r.adminConn()
	if err != nil {
		r.t.Logf("dba lock: %v", err)
		return
	}
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // ends the lock
	if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '1s'; LOCK TABLE "+table+" IN EXCLUSIVE MODE"); err != nil {
		return
	}
	r.fault("DBA lock on " + table)
	time.Sleep(d)
}

// terminateAll ends every session of the test database (of one
// application_name when app is set) but its own.
func (r *histRun) terminateAll(app string) {
	conn, err := r.adminConn()
	if err != nil {
		r.t.Logf("terminate: %v", err)
		return
	}
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND ($1 = '' OR application_name = $1)`, app); err != nil {
		r.t.Logf("terminate: %v", err)
	}
}

// cutMidStatement makes the next statements of one instance go out and
// then lose their connection before any answer comes back: the server runs
// them (a join, a grant, a release commits) while the instance cannot know
// whether it did. A few connections are cut that way, one write each.
func (r *histRun) cutMidStatement(rng *rand.Rand) {
	h := r.pick(rng)
	h.cutWrites.Store(int32(1 + rng.IntN(3)))
	r.fault("connection cut after a statement was sent")
}

// cutConn is an instance's connection that closes itself just after a
// write while its instance has cuts to spend.
type cutConn struct {
	net.Conn
	cuts *atomic.Int32
}

func (c *cutConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err == nil && spendOne(c.cuts) {
		// The bytes are on their way; the answer will find no one.
		c.Conn.Close()
	}
	return n, err
}

// spendOne takes one from n if it is positive.
func spendOne(n *atomic.Int32) bool {
	for {
		v := n.Load()
		if v <= 0 {
			return false
		}
		if n.CompareAndSwap(v, v-1) {
			return true
		}
	}
}

// restartPostgres stops the private cluster, fast (sessions told, as a
// planned restart) or immediate (a crash: recovery replays the WAL), and
// starts it again.
func (r *histRun) restartPostgres(rng *rand.Rand) {
	mode := []string{"fast", "immediate"}[rng.IntN(2)]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	if err := r.cluster.Stop(ctx, mode); err != nil {
		r.t.Errorf("seed %d: restart PostgreSQL: %v", r.seed, err)
		return
	}
	if err := r.cluster.Start(ctx); err != nil {
		r.t.Errorf("seed %d: restart PostgreSQL: %v", r.seed, err)
		return
	}
	r.fault("PostgreSQL restarted (" + mode + ")")
	r.t.Logf("seed %d: PostgreSQL restarted (%s) in %v", r.seed, mode, time.Since(start).Round(time.Millisecond))
}

// killInstance kills one instance as kill -9 would (see histInstance) and
// starts a fresh one in its place.
func (r *histRun) killInstance(rng *rand.Rand, cfg Config) {
	r.mu.Lock()
	i := rng.IntN(len(r.instances))
	victim := r.instances[i]
	r.mu.Unlock()
	victim.dead.Store(true)
	r.terminateAll(victim.name)
	victim.cutOff()
	// A connection that was being dialled at that moment.
	time.Sleep(50 * time.Millisecond)
	r.terminateAll(victim.name)
	r.fault("instance killed")
	fresh := startHistInstance(r.t, r.url, victim.name+"'", cfg)
	r.mu.Lock()
	r.instances[i] = fresh
	r.killed = append(r.killed, victim)
	r.mu.Unlock()
}

// slowProber is the checker's prober: fakeProber's dead table, answered
// after up to 60 ms, as a device on a lab network does, so a handed-over
// device's probe is still running when retries and releases come by.
type slowProber struct {
	*fakeProber
}

func (p slowProber) Probe(ctx context.Context, kind probe.Kind, address string) error {
	t := time.NewTimer(time.Duration(rand.IntN(60)) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	return p.fakeProber.Probe(ctx, kind, address)
}
