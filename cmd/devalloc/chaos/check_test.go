//go:build chaos

package chaos

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// finish runs the invariant checks of every scenario once its load has
// stopped, then reports: the summary always, as an error when any
// invariant broke.
func (h *harness) finish() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, 90*time.Second)
	defer cancel()
	h.checkInstancesAlive()
	h.checkReadyAgain(ctx)
	h.quiesce(ctx)
	h.checkLeases(ctx)
	h.checkDevicesAgree(ctx)
	h.checkLedger(ctx)
	h.checkWaitersGone(ctx)
	h.stopMonitor()
	h.checkConnections(ctx)
	summary := h.summary()
	switch {
	case h.stats.nViolations > 0 && h.sc.measureOnly:
		h.t.Log(summary + "(a measurement: the violations above are reported, not failed)\n")
	case h.stats.nViolations > 0:
		h.t.Error(summary)
	default:
		h.t.Log(summary)
	}
}

// checkInstancesAlive: no instance ended without the harness ending it.
func (h *harness) checkInstancesAlive() {
	for _, in := range h.insts {
		if gone, err := in.exitedOnItsOwn(); gone {
			h.violate("instance %d exited on its own (%v); log:\n%s", in.idx, err, in.logTail(1500))
		}
		if n := in.logCount("panic"); n > 0 {
			h.violate("instance %d logged %d lines with \"panic\"", in.idx, n)
		}
	}
}

// checkReadyAgain: every instance the harness left running is ready
// (within 15 s) once the faults are over, without a restart.
func (h *harness) checkReadyAgain(ctx context.Context) {
	for _, in := range h.insts {
		if in.state.Load() != stateUp {
			continue
		}
		deadline := time.Now().Add(15 * time.Second)
		var last string
		for {
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			r, err := in.admin.ReadyzWithResponse(rctx)
			cancel()
			if err == nil && r.StatusCode() == http.StatusOK {
				break
			}
			if err != nil {
				last = err.Error()
			} else {
				last = r.Status()
			}
			if time.Now().After(deadline) {
				h.violate("instance %d not ready 15s after the faults ended (last /readyz: %s)", in.idx, last)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// quiesce waits until no lease is active: the clients released theirs,
// and the ones abandoned or orphaned expire and must be reaped within the
// reap bound.
func (h *harness) quiesce(ctx context.Context) {
	deadline := time.Now().Add(45 * time.Second)
	for time.Now().Before(deadline) {
		var active int
		var lastExpiry *time.Time
		err := h.db.admin.QueryRow(ctx, `
			SELECT count(*), max(expires_at) FROM devalloc.leases WHERE released_at IS NULL`).Scan(&active, &lastExpiry)
		if err == nil && active == 0 {
			return
		}
		if err == nil && lastExpiry != nil && time.Now().After(lastExpiry.Add(h.sc.reapBound()+time.Second)) {
			return // checkLeases reports what is left
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkLeases checks the database's lease history: per device, fencing
// tokens strictly increase with acquired_at; a lease began only after the
// previous one ended; expired leases were ended after, and soon after,
// their expiry; and nothing is active any more.
func (h *harness) checkLeases(ctx context.Context) {
	rows, err := h.db.admin.Query(ctx, `
		SELECT id, device_name, fencing_token, acquired_at, expires_at, released_at, coalesce(end_reason, ''), clock_timestamp()
		FROM devalloc.leases ORDER BY device_name, fencing_token, acquired_at`)
	if err != nil {
		h.violate("read leases: %v", err)
		return
	}
	type lease struct {
		id                uuid.UUID
		device            string
		token             int64
		acquired, expires time.Time
		released          *time.Time
		reason            string
		now               time.Time
	}
	var all []lease
	for rows.Next() {
		var l lease
		if err := rows.Scan(&l.id, &l.device, &l.token, &l.acquired, &l.expires, &l.released, &l.reason, &l.now); err != nil {
			h.violate("scan leases: %v", err)
			return
		}
		all = append(all, l)
	}
	if err := rows.Err(); err != nil {
		h.violate("read leases: %v", err)
		return
	}
	var reaped, maxLag time.Duration
	var nExpired int
	for i, l := range all {
		if l.released == nil {
			h.violate("lease %s of %s still active at the end (expired %v ago)", l.id, l.device, l.now.Sub(l.expires).Round(time.Millisecond))
		}
		if l.reason == "expired" && l.released != nil {
			lag := l.released.Sub(l.expires)
			nExpired++
			reaped += lag
			maxLag = max(maxLag, lag)
			switch {
			case lag < 0:
				h.violate("lease %s of %s reaped %v BEFORE it expired", l.id, l.device, -lag)
			case lag > h.sc.reapBound() && !h.inDBFault(l.expires, h.sc.reapBound()):
				h.violate("lease %s of %s reclaimed %v after its expiry (bound: reap interval + %v)",
					l.id, l.device, lag.Round(time.Millisecond), h.sc.reapBound()-h.sc.reapInterval)
			}
		}
		if i == 0 || all[i-1].device != l.device {
			continue
		}
		prev := all[i-1]
		if l.token <= prev.token {
			h.violate("%s: fencing token %d repeated (leases %s and %s)", l.device, l.token, prev.id, l.id)
		}
		if l.acquired.Before(prev.acquired) {
			h.violate("%s: fencing token %d (lease %s) acquired before token %d (lease %s)", l.device, l.token, l.id, prev.token, prev.id)
		}
		if prev.released == nil || l.acquired.Before(*prev.released) {
			h.violate("TWO HOLDERS in the database: %s lease %s (token %d) acquired at %s while lease %s (token %d) was active (ended %v)",
				l.device, l.id, l.token, l.acquired.Format(time.RFC3339Nano), prev.id, prev.token, prev.released)
		}
	}
	if nExpired > 0 {
		h.note("reaper: %d leases expired; ended on average %v, at most %v after expiry (bound %v)",
			nExpired, (reaped / time.Duration(nExpired)).Round(time.Millisecond), maxLag.Round(time.Millisecond), h.sc.reapBound())
	}
	h.note("database: %d leases in total", len(all))
}

// checkDevicesAgree: a device is leased exactly when it has an active
// lease, points at that lease, and its fencing counter is its newest
// lease's token.
func (h *harness) checkDevicesAgree(ctx context.Context) {
	rows, err := h.db.admin.Query(ctx, `
		SELECT d.name, d.state, d.lease_id, d.fencing_token,
		       (SELECT count(*) FROM devalloc.leases l WHERE l.device_id = d.id AND l.released_at IS NULL),
		       (SELECT l.id FROM devalloc.leases l WHERE l.device_id = d.id AND l.released_at IS NULL LIMIT 1),
		       coalesce((SELECT max(l.fencing_token) FROM devalloc.leases l WHERE l.device_id = d.id), 0)
		FROM devalloc.devices d ORDER BY d.name`)
	if err != nil {
		h.violate("read devices: %v", err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var name, state string
		var leaseID, activeID *uuid.UUID
		var token, maxToken int64
		var active int
		if err := rows.Scan(&name, &state, &leaseID, &token, &active, &activeID, &maxToken); err != nil {
			h.violate("scan devices: %v", err)
			return
		}
		switch {
		case active > 1:
			h.violate("device %s has %d active leases", name, active)
		case (state == "leased") != (active == 1):
			h.violate("device %s is %s with %d active leases", name, state, active)
		case active == 1 && (leaseID == nil || *leaseID != *activeID):
			h.violate("device %s points at lease %v but its active lease is %v", name, leaseID, activeID)
		case active == 0 && leaseID != nil:
			h.violate("device %s points at lease %v with no active lease", name, leaseID)
		}
		if token != maxToken {
			h.violate("device %s fencing counter %d, newest lease token %d", name, token, maxToken)
		}
	}
	if err := rows.Err(); err != nil {
		h.violate("read devices: %v", err)
	}
}

// checkLedger holds the clients' record against the database: every
// lease a client was granted is there with the same device, token and
// times, and a lease that ended as "released" was let go by its holder.
func (h *harness) checkLedger(ctx context.Context) {
	led := h.led.snapshot()
	rows, err := h.db.admin.Query(ctx, `
		SELECT id, device_name, fencing_token, acquired_at, coalesce(end_reason, '') FROM devalloc.leases`)
	if err != nil {
		h.violate("read leases: %v", err)
		return
	}
	defer rows.Close()
	seen := 0
	for rows.Next() {
		var id uuid.UUID
		var device, reason string
		var token int64
		var acquired time.Time
		if err := rows.Scan(&id, &device, &token, &acquired, &reason); err != nil {
			h.violate("scan leases: %v", err)
			return
		}
		g, ok := led[id]
		if !ok {
			continue
		}
		seen++
		if g.device != device || g.token != token || !g.acquiredAt.Equal(acquired) {
			h.violate("lease %s: client saw %s token %d at %s, database says %s token %d at %s",
				id, g.device, g.token, g.acquiredAt, device, token, acquired)
		}
		if reason == "released" && !g.letGo {
			h.violate("lease %s of %s ended as released, but its holder (client %d) never released it", id, device, g.client)
		}
	}
	if err := rows.Err(); err != nil {
		h.violate("read leases: %v", err)
	}
	if seen != len(led) {
		h.violate("%d leases granted to clients are missing from the database", len(led)-seen)
	}
}

// checkWaitersGone: once the clients stopped, no instance has an acquire
// waiting (a vanished client left nothing behind).
func (h *harness) checkWaitersGone(ctx context.Context) {
	for _, in := range h.insts {
		if in.state.Load() != stateUp {
			continue
		}
		var left int64
		for range 20 {
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			r, err := in.admin.ListPoolsWithResponse(rctx)
			cancel()
			if err != nil || r.JSON200 == nil {
				left = -1
				time.Sleep(250 * time.Millisecond)
				continue
			}
			left = 0
			for _, p := range r.JSON200.Pools {
				left += p.Waiting
			}
			if left == 0 {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		switch {
		case left < 0:
			h.violate("instance %d: GET /v1/pools failed after the scenario", in.idx)
		case left > 0:
			h.violate("instance %d still counts %d waiting acquires after every client stopped", in.idx, left)
		}
	}
}

// checkConnections: the monitor's samples stayed within the bounds, and at
// the end every instance's connections are back in its pool: at most
// instances × (max-conns + 1), none idle in a transaction for long.
func (h *harness) checkConnections(ctx context.Context) {
	h.mu.Lock()
	w := h.conns
	h.mu.Unlock()
	if w.overBound > 0 {
		h.violate("connections over the bound in %d of %d samples; first: %s", w.overBound, w.samples, w.firstOver)
	}
	if w.idleTooLong > 0 {
		h.violate("sessions idle in transaction over %v in %d samples; first: %s", h.sc.idleInTxBound, w.idleTooLong, w.firstIdleLng)
	}
	s, err := h.db.sampleConns(ctx)
	if err != nil {
		h.violate("sample connections: %v", err)
		return
	}
	if s.total > h.sc.connBound() {
		h.violate("after the scenario: %d connections to the database (bound %d)", s.total, h.sc.connBound())
	}
	if s.idleInTx > 0 && s.oldestIdleInTx > 3*time.Second {
		h.violate("after the scenario: %d sessions idle in transaction, the oldest for %v", s.idleInTx, s.oldestIdleInTx.Round(time.Millisecond))
	}
}

// lockedIdleDevices counts idle devices whose row another session has
// locked (FOR UPDATE NOWAIT fails on them).
func (h *harness) lockedIdleDevices(ctx context.Context) (locked int, names []string, err error) {
	rows, err := h.db.admin.Query(ctx, `SELECT id, name FROM devalloc.devices WHERE state = 'idle' ORDER BY id`)
	if err != nil {
		return 0, nil, err
	}
	type dev struct {
		id   int64
		name string
	}
	var devs []dev
	for rows.Next() {
		var d dev
		if err := rows.Scan(&d.id, &d.name); err != nil {
			return 0, nil, err
		}
		devs = append(devs, d)
	}
	if err := rows.Err(); err != nil {
		return 0, nil, err
	}
	for _, d := range devs {
		err := pgx.BeginFunc(ctx, h.db.admin, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `SELECT 1 FROM devalloc.devices WHERE id = $1 FOR UPDATE NOWAIT`, d.id)
			return err
		})
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55P03" {
			locked++
			names = append(names, d.name)
		} else if err != nil {
			return locked, names, fmt.Errorf("lock %s: %w", d.name, err)
		}
	}
	return locked, names, nil
}
