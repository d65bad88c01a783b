package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// newPoolName is a pool no earlier run used, so a scenario starts from a
// known state even on a database that earlier runs left things in.
func newPoolName(scenario string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "bench-" + scenario + "-" + hex.EncodeToString(b)
}

// deviceRequest is the body of POST /v1/devices.
type deviceRequest struct {
	Name    string            `json:"name"`
	Pool    string            `json:"pool"`
	Labels  map[string]string `json:"labels,omitempty"`
	Address string            `json:"address"`
	Probe   string            `json:"probe"`
}

// cleanupTimeout bounds deleting a scenario's pool; a million devices
// take seconds.
const cleanupTimeout = 2 * time.Minute

// registerParallel is how many registrations are in flight at once: enough
// to hide the round trips, few enough not to need more connections than a
// default instance has.
const registerParallel = 8

// FarmLabels are the labels the cycle and handoff scenarios give device i,
// as a farm labels its phones: ten models, one OS version. An acquire
// naming only the pool still pays for them (the labels' index is updated
// with every state change), which is what a farm runs.
func FarmLabels(i int) map[string]string {
	return map[string]string{"model": fmt.Sprintf("m%d", i%10), "os": "14"}
}

// FarmLabelsDescription says what FarmLabels gives, for the report.
const FarmLabelsDescription = `{"model": "m0".."m9", "os": "14"}`

// registerDevices registers n devices <pool>-<i> through the API at base,
// with the given probe kind and address, and labels(i) when labels is not
// nil.
func registerDevices(ctx context.Context, c *client, base, pool string, n int, probe, address string, labels func(int) map[string]string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan int)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for range min(registerParallel, n) {
		wg.Go(func() {
			for i := range next {
				req := deviceRequest{
					Name: fmt.Sprintf("%s-%d", pool, i), Pool: pool,
					Address: address, Probe: probe,
				}
				if labels != nil {
					req.Labels = labels(i)
				}
				body := encode(req)
				if err := c.registerDevice(ctx, base, body); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
			}
		})
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("register %d devices in pool %s: %w", n, pool, firstErr)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("register %d devices in pool %s: %w", n, pool, err)
	}
	return nil
}

// dropPool deletes a scenario's pool: its leases (history included) and
// its devices, in one transaction. Cleanup must run even when the
// scenario's context was cancelled, so it gets its own.
//
// Leases go first: deleting a device would null the device of an active
// lease, which a CHECK forbids; the device's reference to its lease is a
// deferred constraint, satisfied again at commit once the device is gone
// too. Where the role may (a superuser), the foreign-key triggers are
// skipped for this transaction (session_replication_role = replica):
// leases.device_id has no index of its own, so each deleted device would
// otherwise cost a scan of the leases table, minutes for a million
// devices. Skipping them is safe here because every lease of the pool's
// devices goes too.
func dropPool(db *pgxpool.Pool, pool string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("drop pool %s: %w", pool, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := skipTriggers(ctx, tx); err != nil {
		return fmt.Errorf("drop pool %s: %w", pool, err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM devalloc.leases WHERE pool = $1`, pool); err != nil {
		return fmt.Errorf("drop pool %s: delete leases: %w", pool, err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM devalloc.devices WHERE pool = $1`, pool); err != nil {
		return fmt.Errorf("drop pool %s: delete devices: %w", pool, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("drop pool %s: %w", pool, err)
	}
	return nil
}

// skipTriggers sets session_replication_role = replica for the rest of
// tx, if the role may; otherwise it leaves tx as it was. The attempt runs
// in a savepoint, since a refused SET aborts the transaction around it.
func skipTriggers(ctx context.Context, tx pgx.Tx) error {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return err
	}
	if _, err := sp.Exec(ctx, `SET LOCAL session_replication_role = replica`); err != nil {
		return sp.Rollback(ctx)
	}
	return sp.Commit(ctx) // the setting lasts until tx ends
}
