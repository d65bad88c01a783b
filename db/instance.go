package db

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/internal/jitter"
	"github.com/devalloc/devalloc/db/internal/testsignal"
	"github.com/devalloc/devalloc/db/wake"
)

// errNotRegistered: the instance has no row in devalloc.instances yet (its
// listener has not connected), so it cannot put requests in line. It
// passes as soon as the listener connects; IsTransient treats it so.
var errNotRegistered = errors.New("instance not registered yet: its listener has not connected to the database")

// How long a listener's new session keeps trying for its instance's
// liveness lock, and how often. While this instance's listener is down
// (that is, exactly while it reconnects) other instances' transactions take
// the lock shared for a moment (devalloc.instance_alive: every release that
// walks the line past this instance's waiters, every waiting count); under
// load a single try nearly always meets one of them. An older session of
// this instance holds it for good and still fails the claim, after this.
const (
	livenessClaimPatience = time.Second
	livenessClaimRetry    = 20 * time.Millisecond
)

// claimLiveness registers this instance (on its first connection) and takes
// its liveness lock on conn, the listener's session: the lock lives exactly
// as long as that session, so when the process dies every other instance
// sees at once that its waiters can no longer be answered.
func (a *Allocator) claimLiveness(ctx context.Context, conn *pgx.Conn) error {
	id := a.instanceID.Load()
	if id == 0 {
		name := instanceName()
		var err error
		if id, err = dbsqlc.New(conn).RegisterInstance(ctx, dbsqlc.RegisterInstanceParams{
			Name: name, SilentSeconds: a.keeper.silentAfter.Seconds(), ProbeSeconds: a.keeper.probeTimeout.Seconds(),
		}); err != nil {
			return fmt.Errorf("register instance: %w", err)
		}
		a.instanceID.Store(id)
		a.log.Info("instance registered", "instance", id, "name", name)
	} else {
		// A reconnect, maybe after an outage past the heartbeat bound: beat
		// now rather than at the keeper's next turn, so the line counts this
		// instance alive again as soon as it has its lock back (and its row
		// is back if another instance removed it). The reconnect's re-check
		// then wakes the waiters that were skipped or lost their rows.
		recreated, err := a.keeper.heartbeatOn(ctx, dbsqlc.New(conn), id)
		if err != nil {
			return fmt.Errorf("heartbeat of instance %d on reconnect: %w", id, err)
		}
		if recreated {
			a.log.Warn("this instance's row had been removed while it was cut off; put it back", "instance", id)
		}
	}
	if err := takeLivenessLock(ctx, conn, id); err != nil {
		return err
	}
	// Waiters here hear that they were served on a channel of their own,
	// so other instances are not woken for it.
	if _, err := conn.Exec(ctx, "LISTEN "+wake.ServedChannel(id)); err != nil {
		return fmt.Errorf("listen for instance %d's served waiters: %w", id, err)
	}
	return nil
}

// takeLivenessLock takes instance id's liveness lock on conn, trying for
// livenessClaimPatience: a try, not a wait, because a session of ours that
// the network cut off may hold it still (then the listener retries, with
// its backoff, until that session is gone); and more than one try, because
// other instances' alive checks hold it shared for a moment at a time.
func takeLivenessLock(ctx context.Context, conn *pgx.Conn, id int64) error {
	deadline := time.Now().Add(livenessClaimPatience)
	for {
		got, err := dbsqlc.New(conn).TakeLivenessLock(ctx, id)
		if err != nil {
			return fmt.Errorf("take liveness lock of instance %d: %w", id, err)
		}
		if got {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("liveness lock of instance %d is held by an older session of this instance", id)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("take liveness lock of instance %d: %w", id, ctx.Err())
		case <-time.After(livenessClaimRetry):
		}
	}
}

// silentAfter is how long this instance may go without a heartbeat and
// still count as alive for the line (devalloc.instances.silent_after, read
// by devalloc.instance_alive): three heartbeat intervals, so one late or
// lost heartbeat is not fatal, while a crashed host whose session the
// server keeps stops being served within 30 s (with the default 10 s).
func (a *Allocator) silentAfter() time.Duration {
	return 3 * a.cfg.HeartbeatInterval
}

// instanceKeeper marks this instance alive every interval (jittered) and
// removes instances that stopped or were cut off (with their waiters, which
// the line has been skipping since; see ForgetGoneInstances). On stop it
// removes this instance's own row.
//
// While its own heartbeat fails for longer than half its bound, other
// instances may be skipping this one's waiters: devices freed meanwhile go
// to others or stay idle, and nothing will tell these waiters. So when the
// heartbeat succeeds again after such a gap (or had to put the row back,
// which took the waiters' rows with it), it asks for a full re-check: that
// wakes the waiters whose rows went (they rejoin at their old places) and
// the others to dispatch the idle devices they fit.
type instanceKeeper struct {
	q        *dbsqlc.Queries
	interval time.Duration
	// silentAfter is this instance's bound (see Allocator.silentAfter),
	// probeTimeout what it registers (registeredProbeTimeout).
	silentAfter, probeTimeout time.Duration
	// id is this instance's row, 0 until its listener first connects.
	id             *atomic.Int64
	requestRecheck func()
	log            *slog.Logger
	// beat is signalled, for tests, after each heartbeat that went through;
	// forgot with how many gone instances a pass removed (when any).
	beat   testsignal.Signal[struct{}]
	forgot testsignal.Signal[int64]
	loop   loop
}

// Start beats every interval until Stop.
func (k *instanceKeeper) Start(ctx context.Context) { k.loop.start(ctx, k.run) }

// Stop ends the heartbeats, removes this instance's row and waits.
func (k *instanceKeeper) Stop() { k.loop.stop() }

func (k *instanceKeeper) run(ctx context.Context) {
	defer func() {
		id := k.id.Load()
		if id == 0 {
			return
		}
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		if err := k.q.DeregisterInstance(stopCtx, id); err != nil {
			k.log.Warn("could not deregister instance; others remove it later", "instance", id, "err", err)
		}
	}()
	lastBeat := time.Now() // registration wrote seen_at
	warned := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(jitter.Spread(k.interval)):
		}
		if id := k.id.Load(); id != 0 {
			started := time.Now()
			recreated, err := k.heartbeat(ctx, id)
			switch {
			case err != nil && ctx.Err() == nil:
				k.log.Warn("instance heartbeat failed", "instance", id, "err", err)
				if !warned && time.Since(lastBeat) > k.silentAfter {
					warned = true
					k.log.Warn("heartbeat failing past its bound: other instances skip this instance's waiters until it resumes",
						"instance", id, "silent_for", time.Since(lastBeat).Round(time.Millisecond), "bound", k.silentAfter)
				}
			case err == nil:
				// Since the last beat was sent: at least as long as the line
				// went without one from this instance.
				if gap := time.Since(lastBeat); recreated || gap > k.silentAfter/2 {
					k.log.Warn("heartbeat resumed after a gap; re-checking this instance's waiters",
						"instance", id, "gap", gap.Round(time.Millisecond), "row_recreated", recreated)
					k.requestRecheck()
				}
				lastBeat, warned = started, false
				k.beat.Signal(struct{}{})
			}
		}
		n, err := k.q.ForgetGoneInstances(ctx, k.silentAfter.Seconds())
		if err != nil && ctx.Err() == nil {
			k.log.Warn("removing gone instances failed", "err", err)
		}
		if n > 0 {
			k.log.Info("removed instances that stopped or were cut off, with their waiters", "instances", n)
			k.forgot.Signal(n)
		}
	}
}

// heartbeat marks the instance alive, putting its row back if another
// instance removed it; recreated says it had to.
func (k *instanceKeeper) heartbeat(ctx context.Context, id int64) (recreated bool, err error) {
	return k.heartbeatOn(ctx, k.q, id)
}

// heartbeatOn is heartbeat through q (the listener's own session, on a
// reconnect), with the bounds the instance registered.
func (k *instanceKeeper) heartbeatOn(ctx context.Context, q *dbsqlc.Queries, id int64) (recreated bool, err error) {
	return q.InstanceHeartbeat(ctx, dbsqlc.InstanceHeartbeatParams{
		ID: id, Name: instanceName(), SilentSeconds: k.silentAfter.Seconds(), ProbeSeconds: k.probeTimeout.Seconds(),
	})
}

// instanceName is host:pid, for people reading devalloc.instances.
func instanceName() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s:%d", host, os.Getpid())
}

// isInstanceRowGone: a join failed because this instance's row is gone
// (the waiters' foreign key to devalloc.instances).
func isInstanceRowGone(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == sqlstateForeignKeyViolation &&
		pgErr.ConstraintName == "waiters_instance_id_fkey"
}

const sqlstateForeignKeyViolation = "23503"

// restoreInstance puts back this instance's row (same id) after another
// instance removed it, and checks that the line counts it as alive again:
// its listener's session still holds the liveness lock and LISTENs on the
// served channel (both keyed by the unchanged id). If not, the listener is
// reconnecting and takes them again; until then the join is refused as a
// transient failure, since a waiter the line skips would never be served.
// The instance's other waiters lost their rows with it: a re-check wakes
// them to rejoin at their places.
func (a *Allocator) restoreInstance(ctx context.Context, id int64) error {
	recreated, err := a.keeper.heartbeat(ctx, id)
	if err != nil {
		return fmt.Errorf("put back the row of instance %d: %w", id, err)
	}
	if recreated {
		a.log.Warn("this instance's row had been removed (its heartbeat was silent past its bound); put it back", "instance", id)
		a.requestRecheck()
	}
	alive, err := a.q.InstanceAlive(ctx, id)
	if err != nil {
		return fmt.Errorf("check the liveness of instance %d: %w", id, err)
	}
	if !alive || !a.listener.Connected() {
		return fmt.Errorf("instance %d holds no liveness lock (its listener is reconnecting): %w", id, errNotRegistered)
	}
	return nil
}

// registeredProbeTimeout is the probe timeout this instance writes to its
// row (devalloc.instances.probe_timeout, which must be positive): the
// reapers of every instance wait that long per device for its handoffs.
func (a *Allocator) registeredProbeTimeout() time.Duration {
	return max(a.cfg.ProbeTimeout, time.Millisecond)
}
