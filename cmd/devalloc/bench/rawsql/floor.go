package rawsql

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// floorShape is raw-schema.sql exactly.
var floorShape = shape{oneActiveLease: true}

// floorNotify is raw-cycle.sql's pg_notify('rawbench_idle', 'default').
var floorNotify = []any{"rawbench_idle", pool}

// Floor is the Go twin of shared/bench/raw-ceiling: it creates schema
// rawbench as raw-schema.sql does, has clients clients (each on its own
// connection) run raw-cycle.sql's acquire+release cycle for d on devices
// devices, drops the schema, and returns the cycles per second. It is the
// reference an HTTP allocator is measured against.
//
// Like raw-ceiling it needs devices >= clients, so that a SKIP LOCKED pick
// always finds a device. It shares the schema name with raw-ceiling, so the
// two must not run at the same time on one database.
func Floor(ctx context.Context, databaseURL string, clients, devices int, d time.Duration) (cyclesPerSec float64, err error) {
	if err := validate(clients, devices, d); err != nil {
		return 0, fmt.Errorf("floor: %w", err)
	}
	if devices < clients {
		return 0, fmt.Errorf("floor: %d devices for %d clients: need a device per client", devices, clients)
	}
	q := newQueries(floorDesign, floorShape)
	var retries atomic.Int64 // none with a device per client; acquire wants a counter
	cycle := func(ctx context.Context, c client) error {
		// BEGIN; SELECT … FOR UPDATE SKIP LOCKED; UPDATE; INSERT … RETURNING; COMMIT
		dev, lease, err := q.acquire(ctx, c, nil, &retries)
		if err != nil {
			return err
		}
		// BEGIN; UPDATE lease; UPDATE device; SELECT pg_notify; COMMIT
		return q.release(ctx, c.conn, dev, lease, nil, floorNotify)
	}
	err = inSchema(ctx, databaseURL, floorDesign.schema, floorShape, devices, func(*pgx.Conn) error {
		var err error
		cyclesPerSec, err = runClients(ctx, databaseURL, clients, d, cycle)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("floor run: %w", err)
	}
	return cyclesPerSec, nil
}
