package rawsql

import (
	"fmt"

	"github.com/jackc/pgx/v5"
)

// notifySQL sends one notification. The channel and payload are
// parameters so that one prepared statement serves every release.
const notifySQL = "SELECT pg_notify($1, $2)"

// queries are the statements of one design on one schema, written once so
// that pgx's statement cache prepares each of them once per connection.
type queries struct {
	lockPool    string // "" when the design takes no advisory lock
	pick        string
	markLeased  string
	guarded     bool
	insertLease string
	endLease    string
	markIdle    string
	overlaps    string
}

func newQueries(d design, sh shape) *queries {
	s := pgx.Identifier{d.schema}.Sanitize()
	q := &queries{
		pick: fmt.Sprintf("SELECT id FROM %s.devices WHERE state = 'idle' AND pool = '%s' ORDER BY id LIMIT 1%s",
			s, pool, d.lockClause),
		markLeased:  fmt.Sprintf("UPDATE %s.devices SET state = 'leased', updated_at = now() WHERE id = $1", s),
		guarded:     d.guarded,
		insertLease: fmt.Sprintf("INSERT INTO %s.leases (device_id, holder) VALUES ($1, $2) RETURNING id", s),
		endLease:    fmt.Sprintf("UPDATE %s.leases SET released_at = %s WHERE id = $1", s, sh.stamp()),
		markIdle:    fmt.Sprintf("UPDATE %s.devices SET state = 'idle', updated_at = now() WHERE id = $1", s),
		overlaps:    overlapsSQL(s),
	}
	if d.lockPool {
		q.lockPool = fmt.Sprintf("SELECT pg_advisory_xact_lock(hashtext('%s'))", pool)
	}
	if d.guarded {
		q.markLeased += " AND state = 'idle'"
	}
	return q
}
