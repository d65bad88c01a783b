package bench

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
)

// rareModel is the model every 1000th scale device is, so a selector on
// it matches 0.1 % of the pool (and at least one device: the first).
const rareModel = "rare"

// loadBatch is how many devices one INSERT adds: large enough to load a
// million rows in seconds, small enough to show progress and not hold one
// huge transaction.
const loadBatch = 100_000

// insertScaleDevices adds devices <pool>-<i> for i in [from, to) with SQL,
// far faster than the API. Device i has labels {"model": "rare", "os": "14"}
// when i is a multiple of 1000, else FarmLabels(i); probe none.
//
// The rows are inserted with session_replication_role = replica where the
// role may set it (a superuser): that skips the trigger that NOTIFYs
// waiters of every new idle device, which would otherwise push a million
// notifications through every instance's listener for nothing (no one
// waits on this pool). Constraints and CHECKs still apply. Elsewhere the
// trigger fires and the load is merely slower.
func insertScaleDevices(ctx context.Context, db *pgxpool.Pool, pool string, from, to int, progress func(done int)) error {
	conn, err := db.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("load devices: %w", err)
	}
	defer conn.Release()
	quiet := false
	if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err == nil {
		quiet = true
	}
	defer func() {
		if quiet {
			// Reset before the connection returns to the pool; a
			// connection that cannot be reset is not reused.
			if _, err := conn.Exec(context.WithoutCancel(ctx), `RESET session_replication_role`); err != nil {
				_ = conn.Conn().Close(context.WithoutCancel(ctx))
			}
		}
	}()
	for lo := from; lo < to; lo += loadBatch {
		hi := min(lo+loadBatch, to)
		_, err := conn.Exec(ctx, `
			INSERT INTO devalloc.devices (name, pool, labels, address, probe)
			SELECT $1 || '-' || i, $1,
			       CASE WHEN i % 1000 = 0 THEN jsonb_build_object('model', $4::text, 'os', '14')
			            ELSE jsonb_build_object('model', 'm' || (i % 10), 'os', '14') END,
			       '127.0.0.1:9', 'none'
			FROM generate_series($2::int, $3::int - 1) AS i`,
			pool, lo, hi, rareModel)
		if err != nil {
			return fmt.Errorf("load devices %d..%d into pool %s: %w", lo, hi, pool, err)
		}
		if progress != nil {
			progress(hi)
		}
	}
	// The planner must see the new size before the pick is timed.
	if _, err := conn.Exec(ctx, `ANALYZE devalloc.devices`); err != nil {
		return fmt.Errorf("analyze devices: %w", err)
	}
	return nil
}

// vacuumDevices reclaims the rows a large scale run deleted, so that the
// scenarios after it find the table (and its indexes) as they were.
func vacuumDevices(ctx context.Context, db *pgxpool.Pool) error {
	if _, err := db.Exec(ctx, `VACUUM (ANALYZE) devalloc.devices`); err != nil {
		return fmt.Errorf("vacuum devices: %w", err)
	}
	return nil
}
