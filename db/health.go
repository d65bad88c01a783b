package db

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/internal/jitter"
)

// healthBatch bounds how many offline devices one pass probes (in parallel).
const healthBatch = 16

// runHealthChecker re-probes offline devices whose backoff has passed and
// returns those that answer to idle (which wakes waiters through the
// devices trigger).
func (a *Allocator) runHealthChecker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(jitter.Spread(a.cfg.HealthInterval)):
		}
		a.checkOffline(ctx)
	}
}

// checkOffline runs one pass and reports how many devices recovered.
func (a *Allocator) checkOffline(ctx context.Context) int {
	// The claim pushes next_probe_at past the probe, so other instances
	// leave these devices alone while this one probes them.
	due, err := a.q.ClaimOfflineDue(ctx, dbsqlc.ClaimOfflineDueParams{
		ClaimSeconds: (2*a.cfg.ProbeTimeout + 5*time.Second).Seconds(),
		Batch:        healthBatch,
	})
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("health check: claim offline devices failed", "err", err)
		}
		return 0
	}
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		recovered int
	)
	for _, dev := range due {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if a.recheckDevice(ctx, dev) {
				mu.Lock()
				recovered++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return recovered
}

func (a *Allocator) recheckDevice(ctx context.Context, dev dbsqlc.DevallocDevice) bool {
	pctx, cancel := context.WithTimeout(ctx, a.cfg.ProbeTimeout)
	perr := a.probe(pctx, dev.Probe, dev.Address)
	cancel()
	if ctx.Err() != nil {
		return false
	}
	if perr == nil {
		r, err := a.q.RecordRecovered(ctx, dev.ID)
		if errors.Is(err, pgx.ErrNoRows) {
			return false
		}
		if err != nil {
			a.log.Warn("health check: record recovery failed", "device", dev.Name, "err", err)
			return false
		}
		a.log.Info("device answers again; back to idle", "device", dev.Name, "pool", dev.Pool, "handed_to_waiters", len(r.HandedTo))
		if len(r.HandedTo) > 0 {
			a.notifier.HandedOver(r.HandedTo)
		}
		return true
	}
	retry := a.healthBackoff(int(dev.ProbeFailures) + 1)
	if err := a.q.RecordStillOffline(ctx, dbsqlc.RecordStillOfflineParams{
		ID: dev.ID, Reason: perr.Error(), RetryInSeconds: retry.Seconds(),
	}); err != nil {
		a.log.Warn("health check: record failure failed", "device", dev.Name, "err", err)
	}
	return false
}

// healthBackoff doubles the wait between probes of a device with each
// consecutive failure, from HealthBackoffMin up to HealthBackoffMax.
func (a *Allocator) healthBackoff(failures int) time.Duration {
	d := a.cfg.HealthBackoffMin
	for i := 1; i < failures && d < a.cfg.HealthBackoffMax; i++ {
		d *= 2
	}
	return jitter.Spread(min(d, a.cfg.HealthBackoffMax))
}
