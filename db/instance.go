package db

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
)

// livenessLockClass is the first key of every instance's liveness advisory
// lock (the second is its id); devalloc.instance_alive tests it.
const livenessLockClass = 1685482609

// errNotRegistered: the instance has no row in devalloc.instances yet (its
// listener has not connected), so it cannot put requests in line. It
// passes as soon as the listener connects; IsTransient treats it so.
var errNotRegistered = errors.New("instance not registered yet: its listener has not connected to the database")

// claimLiveness registers this instance (on its first connection) and takes
// its liveness lock on conn, the listener's session: the lock lives exactly
// as long as that session, so when the process dies every other instance
// sees at once that its waiters can no longer be answered.
func (a *Allocator) claimLiveness(ctx context.Context, conn *pgx.Conn) error {
	id := a.instanceID.Load()
	if id == 0 {
		host, _ := os.Hostname()
		name := fmt.Sprintf("%s:%d", host, os.Getpid())
		if err := conn.QueryRow(ctx, `INSERT INTO devalloc.instances (name) VALUES ($1) RETURNING id`, name).Scan(&id); err != nil {
			return fmt.Errorf("register instance: %w", err)
		}
		a.instanceID.Store(id)
		a.log.Info("instance registered", "instance", id, "name", name)
	}
	var got bool
	// try: a session of ours that the network cut off may hold it still;
	// then the listener retries until that session is gone.
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2::int4)`, livenessLockClass, id).Scan(&got); err != nil {
		return fmt.Errorf("take liveness lock of instance %d: %w", id, err)
	}
	if !got {
		return fmt.Errorf("liveness lock of instance %d is held by an older session of this instance", id)
	}
	return nil
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
			if err := a.q.InstanceHeartbeat(ctx, id); err != nil && ctx.Err() == nil {
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
