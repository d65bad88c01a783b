package rawsql

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// pool is the one device pool every measurement uses (raw-cycle.sql's).
const pool = "default"

// cleanupTimeout bounds dropping a schema and closing connections, which
// happen even after the caller's context has ended.
const cleanupTimeout = 10 * time.Second

// shape is the variant of shared/bench/raw-schema.sql a schema gets.
type shape struct {
	// oneActiveLease keeps raw-schema.sql's unique index "one active lease
	// per device". The baselines leave it out: a naive allocator would not
	// have it, and with it a double allocation would fail an INSERT instead
	// of being counted.
	oneActiveLease bool
	// clockStamps takes lease times from clock_timestamp() rather than
	// now(), which is the transaction's start. Only then do lease intervals
	// of different transactions compare (the overlap cross-check): a lease
	// starts at its INSERT and ends at its UPDATE, both made while its
	// transaction holds the device row's lock.
	clockStamps bool
}

// stamp is the SQL expression for "the time of this lease event".
func (sh shape) stamp() string {
	if sh.clockStamps {
		return "clock_timestamp()"
	}
	return "now()"
}

// schemaSQL is raw-schema.sql with the schema name, the shape and the
// device count filled in.
func schemaSQL(schema string, sh shape, devices int) string {
	s := pgx.Identifier{schema}.Sanitize()
	ddl := fmt.Sprintf(`DROP SCHEMA IF EXISTS %[1]s CASCADE;
CREATE SCHEMA %[1]s;
CREATE TABLE %[1]s.devices (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  pool text NOT NULL DEFAULT 'default',
  state text NOT NULL DEFAULT 'idle',
  updated_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70);
CREATE INDEX devices_idle ON %[1]s.devices (pool, id) WHERE state = 'idle';
CREATE TABLE %[1]s.leases (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  device_id bigint NOT NULL REFERENCES %[1]s.devices (id),
  holder int NOT NULL,
  acquired_at timestamptz NOT NULL DEFAULT %[2]s,
  released_at timestamptz
);
`, s, sh.stamp())
	if sh.oneActiveLease {
		ddl += fmt.Sprintf("CREATE UNIQUE INDEX leases_one_active ON %s.leases (device_id) WHERE released_at IS NULL;\n", s)
	}
	return ddl + fmt.Sprintf("INSERT INTO %s.devices (pool) SELECT 'default' FROM generate_series(1, %d);\n", s, devices)
}

// inSchema creates schema with devices idle devices, runs f with the
// connection that created it (for checks after the run), and drops the
// schema again whatever f returned. f must have closed its own
// connections by then, or the DROP would wait on their locks.
func inSchema(ctx context.Context, databaseURL, schema string, sh shape, devices int, f func(admin *pgx.Conn) error) (err error) {
	admin, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer closeConn(ctx, admin)
	// Without arguments pgx sends this as one simple query, whose
	// statements run in one implicit transaction: a failed setup leaves
	// nothing behind.
	if _, err := admin.Exec(ctx, schemaSQL(schema, sh, devices)); err != nil {
		return fmt.Errorf("create schema %s: %w", schema, err)
	}
	defer func() {
		cctx, cancel := cleanupContext(ctx)
		defer cancel()
		if _, dropErr := admin.Exec(cctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); dropErr != nil {
			err = errors.Join(err, fmt.Errorf("drop schema %s: %w", schema, dropErr))
		}
	}()
	return f(admin)
}

// cleanupContext outlives ctx's cancellation, so that schemas are dropped
// and connections closed even when a run was cut short.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

// closeConn closes conn; its error is of no use to a measurement that is
// over.
func closeConn(ctx context.Context, conn *pgx.Conn) {
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	_ = conn.Close(cctx)
}

// validate rejects run parameters no measurement can use.
func validate(clients, devices int, d time.Duration) error {
	switch {
	case clients < 1:
		return fmt.Errorf("%d clients: need at least one", clients)
	case devices < 1:
		return fmt.Errorf("%d devices: need at least one", devices)
	case d <= 0:
		return fmt.Errorf("run time %v: must be positive", d)
	}
	return nil
}
