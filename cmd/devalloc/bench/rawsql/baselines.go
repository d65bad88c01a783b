package rawsql

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/cmd/devalloc/bench"
)

// baselineShape has no one-active-lease index, so that double allocations
// are counted rather than refused, and clock stamps, so that the leases
// table can be cross-checked for overlapping leases.
var baselineShape = shape{clockStamps: true}

// designRun is one design's result plus what bench.BaselineResult has no
// field for.
type designRun struct {
	result bench.BaselineResult
	// retries are acquire attempts that found no device: an empty pick, or
	// a guarded UPDATE that matched nothing. A retry is not a cycle.
	retries int64
	// overlaps is the cross-check of result.DoubleAllocations: leases in
	// the leases table that began while an earlier lease of the same device
	// was active. Both are 0 for a correct design, but they are not the
	// same count: the ledger holds a device from the acquire's UPDATE of it
	// to the release's, the table from the lease's INSERT to the release's
	// UPDATE of the lease. A naive acquire that slips in while the holder
	// is between those two release UPDATEs counts in the ledger only.
	overlaps int
}

// Baselines runs each naive allocator design, then devalloc's SKIP LOCKED
// one for reference, for d each, in a schema of its own with devices
// devices in one pool and clients clients (each on its own connection)
// doing acquire → release cycles. Every design releases the same way.
//
// DoubleAllocations is counted by a ledger the clients keep in memory: a
// client that gets a device another client holds is one. Acquire latency
// runs from the first attempt to the acquire's COMMIT returning, so it
// includes the retries of designs that make them.
func Baselines(ctx context.Context, databaseURL string, clients, devices int, d time.Duration) ([]bench.BaselineResult, error) {
	runs, err := runBaselines(ctx, databaseURL, clients, devices, d)
	if err != nil {
		return nil, err
	}
	results := make([]bench.BaselineResult, len(runs))
	for i, run := range runs {
		results[i] = run.result
	}
	return results, nil
}

// runBaselines is Baselines with the figures its result type has no room
// for.
func runBaselines(ctx context.Context, databaseURL string, clients, devices int, d time.Duration) ([]designRun, error) {
	if err := validate(clients, devices, d); err != nil {
		return nil, fmt.Errorf("baselines: %w", err)
	}
	runs := make([]designRun, 0, len(designs))
	for _, ds := range designs {
		run, err := runDesign(ctx, databaseURL, ds, clients, devices, d)
		if err != nil {
			return nil, err
		}
		runs = append(runs, run)
	}
	return runs, nil
}

// runDesign measures one design in its own schema.
func runDesign(ctx context.Context, databaseURL string, ds design, clients, devices int, d time.Duration) (designRun, error) {
	q := newQueries(ds, baselineShape)
	l := newLedger(devices)
	var acquire bench.Recorder
	var retries atomic.Int64
	run := designRun{result: bench.BaselineResult{Design: ds.name, Clients: clients, Devices: devices, Seconds: d.Seconds()}}
	err := inSchema(ctx, databaseURL, ds.schema, baselineShape, devices, func(admin *pgx.Conn) error {
		cps, err := runClients(ctx, databaseURL, clients, d, func(ctx context.Context, c client) error {
			start := time.Now()
			dev, lease, err := q.acquire(ctx, c, l, &retries)
			if err != nil {
				return err
			}
			acquire.Add(time.Since(start))
			return q.release(ctx, c.conn, dev, lease, l, nil)
		})
		if err != nil {
			return err
		}
		run.result.CyclesPerSec = cps
		run.overlaps, err = q.countOverlaps(ctx, admin)
		return err
	})
	if err != nil {
		return designRun{}, fmt.Errorf("baseline %s: %w", ds.name, err)
	}
	run.result.DoubleAllocations = l.doubleAllocations()
	run.result.Acquire = acquire.Summary()
	run.retries = retries.Load()
	run.result.Retries, run.result.OverlappingLeases = run.retries, run.overlaps
	return run, nil
}
