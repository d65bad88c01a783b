package rawsql

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// overlapsSQL counts the leases that began while an earlier lease of the
// same device was still active: the double allocations as the leases table
// records them, the cross-check of the ledger. A window over each device's
// leases in start order keeps it O(n log n) on a leases table that has no
// index on device_id. An unreleased lease is active for ever.
func overlapsSQL(schema string) string {
	return fmt.Sprintf(`SELECT count(*) FROM (
  SELECT acquired_at,
         max(coalesce(released_at, 'infinity')) OVER (
           PARTITION BY device_id ORDER BY acquired_at, id
           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS earlier_end
  FROM %s.leases
) l WHERE acquired_at < earlier_end`, schema)
}

// countOverlaps runs the cross-check. It is only meaningful on a schema
// with clock stamps (shape.clockStamps).
func (q *queries) countOverlaps(ctx context.Context, conn *pgx.Conn) (int, error) {
	var n int
	if err := conn.QueryRow(ctx, q.overlaps).Scan(&n); err != nil {
		return 0, fmt.Errorf("count overlapping leases: %w", err)
	}
	return n, nil
}
