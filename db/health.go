package db

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/internal/jitter"
	"github.com/devalloc/devalloc/db/internal/testsignal"
)

// healthBatch bounds how many offline devices one pass probes (in parallel).
const healthBatch = 16

// healthChecker re-probes offline devices whose backoff has passed, one
// pass every interval (jittered), and returns those that answer to idle
// (which hands them to the line or wakes waiters through the devices
// trigger).
type healthChecker struct {
	q            *dbsqlc.Queries
	interval     time.Duration
	probeTimeout time.Duration
	// backoffMin and backoffMax bound the wait between probes of a device
	// that keeps failing (doubling from min).
	backoffMin, backoffMax time.Duration
	// probe probes one device (the Allocator's, which reports to the
	// Observer).
	probe func(ctx context.Context, kind, address string) error
	// handedOver tells the waiters a recovered device went to.
	handedOver func(waiters []uuid.UUID)
	log        *slog.Logger
	// passed carries, for tests, how many devices each pass recovered.
	passed testsignal.Signal[int]
	loop   loop
}

// Start runs a pass every interval until Stop.
func (h *healthChecker) Start(ctx context.Context) {
	h.loop.start(ctx, func(ctx context.Context) { every(ctx, h.interval, func(ctx context.Context) { h.pass(ctx) }) })
}

// Stop ends the passes and waits for the one running.
func (h *healthChecker) Stop() { h.loop.stop() }

// pass probes the offline devices that are due and reports how many
// recovered.
func (h *healthChecker) pass(ctx context.Context) int {
	recovered := h.checkOffline(ctx)
	h.passed.Signal(recovered)
	return recovered
}

func (h *healthChecker) checkOffline(ctx context.Context) int {
	// The claim pushes next_probe_at past the probe, so other instances
	// leave these devices alone while this one probes them.
	due, err := h.q.ClaimOfflineDue(ctx, dbsqlc.ClaimOfflineDueParams{
		ClaimSeconds: (2*h.probeTimeout + 5*time.Second).Seconds(),
		Batch:        healthBatch,
	})
	if err != nil {
		if ctx.Err() == nil {
			h.log.Warn("health check: claim offline devices failed", "err", err)
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
			if h.recheckDevice(ctx, dev) {
				mu.Lock()
				recovered++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return recovered
}

func (h *healthChecker) recheckDevice(ctx context.Context, dev dbsqlc.DevallocDevice) bool {
	pctx, cancel := context.WithTimeout(ctx, h.probeTimeout)
	perr := h.probe(pctx, dev.Probe, dev.Address)
	cancel()
	if ctx.Err() != nil {
		return false
	}
	if perr == nil {
		r, err := h.q.RecordRecovered(ctx, dev.ID)
		if errors.Is(err, pgx.ErrNoRows) {
			return false
		}
		if err != nil {
			h.log.Warn("health check: record recovery failed", "device", dev.Name, "err", err)
			return false
		}
		h.log.Info("device answers again; back to idle", "device", dev.Name, "pool", dev.Pool, "handed_to_waiters", len(r.HandedTo))
		if len(r.HandedTo) > 0 {
			h.handedOver(r.HandedTo)
		}
		return true
	}
	retry := h.backoff(int(dev.ProbeFailures) + 1)
	if err := h.q.RecordStillOffline(ctx, dbsqlc.RecordStillOfflineParams{
		ID: dev.ID, Reason: perr.Error(), RetryInSeconds: retry.Seconds(),
	}); err != nil {
		h.log.Warn("health check: record failure failed", "device", dev.Name, "err", err)
	}
	return false
}

// backoff doubles the wait between probes of a device with each
// consecutive failure, from backoffMin up to backoffMax.
func (h *healthChecker) backoff(failures int) time.Duration {
	d := h.backoffMin
	for i := 1; i < failures && d < h.backoffMax; i++ {
		d *= 2
	}
	return jitter.Spread(min(d, h.backoffMax))
}
