package db

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/dbsqlc"
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
		if id, err = dbsqlc.New(conn).RegisterInstance(ctx, name); err != nil {
			return fmt.Errorf("register instance: %w", err)
		}
		a.instanceID.Store(id)
		a.log.Info("instance registered", "instance", id, "name", name)
	}
	if err := takeLivenessLock(ctx, conn, id); err != nil {
		return err
	}
	// Waiters here hear that they were served on a channel of their own,
	// so other instances are not woken for it.
	if _, err := conn.Exec(ctx, "LISTEN "+servedChannel(id)); err != nil {
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

// servedChannel is the NOTIFY channel on which the transactions that hand
// devices to an instance's waiters tell it (devalloc.grant_to_waiter,
// EndLease).
func servedChannel(instance int64) string {
	return fmt.Sprintf("devalloc_served_%d", instance)
}

// runInstanceKeeper marks this instance alive every HeartbeatInterval and
// removes instances that stopped without saying so (with their waiters,
// which the line has been skipping since their listener session ended). On
// stop it removes this instance's own row.
func (a *Allocator) runInstanceKeeper(ctx context.Context) {
	defer func() {
		id := a.instanceID.Load()
		if id == 0 {
			return
		}
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		if err := a.q.DeregisterInstance(stopCtx, id); err != nil {
			a.log.Warn("could not deregister instance; others remove it later", "instance", id, "err", err)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(jitter(a.cfg.HeartbeatInterval)):
		}
		if id := a.instanceID.Load(); id != 0 {
			if err := a.q.InstanceHeartbeat(ctx, dbsqlc.InstanceHeartbeatParams{ID: id, Name: instanceName()}); err != nil && ctx.Err() == nil {
				a.log.Warn("instance heartbeat failed", "instance", id, "err", err)
			}
		}
		n, err := a.q.ForgetGoneInstances(ctx, (3 * a.cfg.HeartbeatInterval).Seconds())
		if err != nil && ctx.Err() == nil {
			a.log.Warn("removing gone instances failed", "err", err)
		}
		if n > 0 {
			a.log.Info("removed instances that stopped without deregistering, with their waiters", "instances", n)
		}
	}
}

// instanceName is host:pid, for people reading devalloc.instances.
func instanceName() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s:%d", host, os.Getpid())
}
