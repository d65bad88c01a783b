// Package migrate applies devalloc's embedded goose migrations. Many
// instances may start at once, so every run holds goose's Postgres
// session advisory lock while it looks at and changes the schema.
package migrate

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/keepalive"
	"github.com/devalloc/devalloc/migrations"
)

// versionTable keeps goose's bookkeeping beside the tables it describes.
const versionTable = "devalloc.goose_db_version"

// Migrator runs migrations against one database.
type Migrator struct {
	db       *sql.DB
	provider *goose.Provider
}

// Open connects to databaseURL and prepares a goose provider holding the
// advisory-lock locker.
func Open(ctx context.Context, databaseURL string, logger *slog.Logger) (*Migrator, error) {
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	// libpq's keepalive settings in the URL are devalloc's to apply, not
	// parameters for the server; a migration's connection wants them too.
	if err := keepalive.Apply(&cfg.Config); err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	db := stdlib.OpenDB(*cfg)
	if err := ensureSchema(ctx, db); err != nil {
		db.Close()
		return nil, err
	}
	// goose polls a busy lock every 5 s by default; instances that start
	// together would idle that long behind the one migrating. Poll every
	// second, for up to five minutes.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 300))
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("migration locker: %w", err)
	}
	opts := []goose.ProviderOption{
		goose.WithSessionLocker(locker),
		goose.WithTableName(versionTable),
		goose.WithDisableGlobalRegistry(true),
	}
	if logger != nil {
		opts = append(opts, goose.WithSlog(logger))
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS, opts...)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("goose provider: %w", err)
	}
	return &Migrator{db: db, provider: provider}, nil
}

// Close releases the migrator's connections.
func (m *Migrator) Close() error { return m.db.Close() }

// Up applies every pending migration and returns how many ran.
func (m *Migrator) Up(ctx context.Context) (int, error) {
	results, err := m.provider.Up(ctx)
	if err != nil {
		return len(results), fmt.Errorf("migrate up: %w", err)
	}
	return len(results), nil
}

// Down rolls back the most recent migration.
func (m *Migrator) Down(ctx context.Context) error {
	if _, err := m.provider.Down(ctx); err != nil {
		return fmt.Errorf("migrate down: %w", err)
	}
	return nil
}

// Status describes each known migration and whether it is applied.
func (m *Migrator) Status(ctx context.Context) ([]*goose.MigrationStatus, error) {
	st, err := m.provider.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate status: %w", err)
	}
	return st, nil
}

// Up is the one-call form used at serve start and by test helpers.
func Up(ctx context.Context, databaseURL string, logger *slog.Logger) error {
	m, err := Open(ctx, databaseURL, logger)
	if err != nil {
		return err
	}
	defer m.Close()
	_, err = m.Up(ctx)
	return err
}

// ensureSchema creates the devalloc schema that goose's version table lives
// in; goose creates that table before the first migration runs. CREATE
// SCHEMA IF NOT EXISTS is not safe against a concurrent twin, so instances
// starting together serialise on a transaction advisory lock.
func ensureSchema(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("create schema devalloc: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(hashtext('devalloc.ensure_schema'))"); err != nil {
		return fmt.Errorf("lock for schema creation: %w", err)
	}
	if _, err := tx.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS devalloc"); err != nil {
		return fmt.Errorf("create schema devalloc: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("create schema devalloc: %w", err)
	}
	return nil
}
