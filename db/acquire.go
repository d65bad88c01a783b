package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/dbsqlc"
	"github.com/devalloc/devalloc/db/probe"
)

// AcquireRequest asks for one device.
type AcquireRequest struct {
	Selector Selector
	// Wait is how long to long-poll when nothing matching is idle; 0 answers
	// at once.
	Wait time.Duration
	// TTL is the lease's lifetime; 0 means the configured default.
	TTL time.Duration
	// Owner is the API key the lease belongs to; Holder is the client's own
	// free-text description of who holds it.
	Owner  string
	Holder string
	// IdempotencyKey is recorded with the lease.
	IdempotencyKey string
}

// maxProbeRoundsWithoutWait bounds how many transactions an acquire that
// may not wait spends on candidates that fail their probes (each round
// probes up to ProbeCandidates devices).
const maxProbeRoundsWithoutWait = 3

// noneIdle: this attempt found nothing it could lease. probesFailed
// distinguishes "every candidate was dead" (worth retrying at once: the dead
// ones are offline now) from "nothing idle" (wait for a wake-up).
type noneIdle struct{ probesFailed bool }

func (noneIdle) Error() string { return "no idle device matched" }

// Acquire leases a device matching req.Selector, waiting up to req.Wait for
// one to become idle. It fails with ErrUnsatisfiable at once when no
// registered device could ever match, and with ErrNoDevice when the wait
// ends empty. If ctx ends first, no lease is left behind.
func (a *Allocator) Acquire(ctx context.Context, req AcquireRequest) (Lease, error) {
	if req.TTL <= 0 {
		req.TTL = a.cfg.DefaultTTL
	}
	req.Wait = min(max(req.Wait, 0), a.cfg.MaxWait)
	var w *Waiter
	if req.Wait > 0 {
		// Join before the first attempt: a device freed between an empty
		// attempt and joining would otherwise wake nobody.
		w = a.hub.Join(req.Selector)
		defer w.Leave()
	}
	deadline := time.NewTimer(req.Wait)
	defer deadline.Stop()
	checkedSatisfiable := false
	probeRounds := 0
	for {
		if w != nil {
			w.BeginAttempt()
		}
		lease, err := a.attempt(ctx, req)
		if w != nil {
			w.EndAttempt()
		}
		var none noneIdle
		if !errors.As(err, &none) {
			return lease, err
		}
		if !checkedSatisfiable {
			if err := a.checkSatisfiable(ctx, req.Selector); err != nil {
				return Lease{}, err
			}
			checkedSatisfiable = true
		}
		if none.probesFailed && (w != nil || probeRounds < maxProbeRoundsWithoutWait) {
			// The dead candidates are offline now; live ones may be next in
			// line, so try again at once rather than wait or give up.
			probeRounds++
			continue
		}
		if w == nil {
			return Lease{}, ErrNoDevice
		}
		select {
		case <-w.Wake():
		case <-deadline.C:
			return Lease{}, ErrNoDevice
		case <-ctx.Done():
			return Lease{}, ctx.Err()
		}
	}
}

func (a *Allocator) checkSatisfiable(ctx context.Context, sel Selector) error {
	ok, err := a.q.SelectorCanMatch(ctx, dbsqlc.SelectorCanMatchParams{Pool: sel.Pool, Labels: sel.Labels.encode()})
	if err != nil {
		return fmt.Errorf("check selector in pool %q: %w", sel.Pool, err)
	}
	if !ok {
		return ErrUnsatisfiable
	}
	return nil
}

// attempt is one acquire transaction: pick the least recently released
// idle device with SKIP LOCKED, probe it under the row lock, and grant it;
// a device that fails its probe goes offline and the next candidate is
// tried, up to ProbeCandidates.
func (a *Allocator) attempt(ctx context.Context, req AcquireRequest) (Lease, error) {
	sel := req.Selector
	tx, err := a.pool.Begin(ctx)
	if err != nil {
		return Lease{}, fmt.Errorf("acquire in pool %q: begin: %w", sel.Pool, err)
	}
	// Rollback must run even when ctx is what ended the attempt.
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	q := a.q.WithTx(tx)
	labels := sel.Labels.encode()
	failed := 0
	for failed < a.cfg.ProbeCandidates {
		row, err := q.PickIdleDevice(ctx, dbsqlc.PickIdleDeviceParams{Pool: sel.Pool, Labels: labels})
		if errors.Is(err, pgx.ErrNoRows) {
			break
		}
		if err != nil {
			return Lease{}, fmt.Errorf("acquire in pool %q: pick: %w", sel.Pool, err)
		}
		probed := probe.Kind(row.Probe) != probe.None
		if perr := a.probeDevice(ctx, row); perr != nil {
			if ctx.Err() != nil {
				return Lease{}, ctx.Err()
			}
			a.log.Info("device failed its probe; taking it offline", "device", row.Name, "pool", row.Pool, "err", perr)
			if err := q.MarkDeviceOffline(ctx, dbsqlc.MarkDeviceOfflineParams{
				ID: row.ID, Reason: perr.Error(), RetryInSeconds: a.cfg.HealthBackoffMin.Seconds(),
			}); err != nil {
				return Lease{}, fmt.Errorf("acquire in pool %q: mark %q offline: %w", sel.Pool, row.Name, err)
			}
			failed++
			continue
		}
		return a.grant(ctx, tx, q, req, row, probed)
	}
	if failed > 0 {
		// Keep the offline marks: they are what the probes learned.
		if err := tx.Commit(ctx); err != nil {
			return Lease{}, fmt.Errorf("acquire in pool %q: commit offline marks: %w", sel.Pool, err)
		}
	}
	return Lease{}, noneIdle{probesFailed: failed > 0}
}

func (a *Allocator) probeDevice(ctx context.Context, row dbsqlc.DevallocDevice) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.ProbeTimeout)
	defer cancel()
	return a.cfg.Prober.Probe(ctx, probe.Kind(row.Probe), row.Address)
}

// grant marks the locked device leased and records the lease, then commits.
// The commit itself runs without the request's context: were it cancelled
// mid-commit we could not know whether the lease exists. If the client went
// away meanwhile, the fresh lease is ended at once, so nothing is left behind.
func (a *Allocator) grant(ctx context.Context, tx pgx.Tx, q *dbsqlc.Queries, req AcquireRequest, row dbsqlc.DevallocDevice, probed bool) (Lease, error) {
	leaseID, err := uuid.NewV7()
	if err != nil {
		return Lease{}, fmt.Errorf("lease id: %w", err)
	}
	var idem *string
	if req.IdempotencyKey != "" {
		idem = &req.IdempotencyKey
	}
	lr, err := q.GrantLease(ctx, dbsqlc.GrantLeaseParams{
		LeaseID:        leaseID,
		Owner:          req.Owner,
		Holder:         req.Holder,
		TtlSeconds:     req.TTL.Seconds(),
		IdempotencyKey: idem,
		Probed:         probed,
		DeviceID:       row.ID,
	})
	if err != nil {
		return Lease{}, fmt.Errorf("acquire %q in pool %q: grant: %w", row.Name, row.Pool, err)
	}
	if err := ctx.Err(); err != nil {
		return Lease{}, err
	}
	if err := tx.Commit(context.WithoutCancel(ctx)); err != nil {
		return Lease{}, fmt.Errorf("acquire %q in pool %q: commit: %w", row.Name, row.Pool, err)
	}
	dev, err := deviceFromRow(row)
	if err != nil {
		return Lease{}, err
	}
	lease := leaseFromRow(lr, &dev)
	if ctx.Err() != nil {
		a.abandon(lease)
		return Lease{}, ctx.Err()
	}
	return lease, nil
}

// abandon ends a lease whose requester left before it could be handed over.
func (a *Allocator) abandon(lease Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := a.q.EndLease(ctx, dbsqlc.EndLeaseParams{ID: lease.ID, EndReason: EndReleased}); err != nil {
		// The reaper reclaims it at expiry.
		a.log.Error("could not end an abandoned lease", "lease", lease.ID, "device", lease.Device.Name, "err", err)
	}
}
