package db

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// Safe retries: a statement that failed before any of it reached the
// server (pgconn.SafeToRetry: the connection broke under the write, a
// failover or a cut connection) is sent once more, on another connection
// from the pool. A statement that may have reached the server is never
// sent again here: it may have run, and only the caller knows whether
// running it twice is harmless. Pooled connections the server already
// closed are replaced before use (db/poolping); this covers the rest.

// retryable reports whether err is a failure worth one more try: nothing
// was sent, and the caller still waits for an answer.
func retryable(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && pgconn.SafeToRetry(err)
}

// safeRetryDB is a dbsqlc.DBTX on a pool whose statements are retried once
// when they failed without reaching the server. Only for a pool: inside a
// transaction a broken connection takes the transaction with it.
type safeRetryDB struct {
	db dbsqlc.DBTX
}

// retrying wraps a pool (or anything else that hands out a fresh
// connection per statement) for safe retries.
func retrying(db dbsqlc.DBTX) dbsqlc.DBTX { return safeRetryDB{db: db} }

func (r safeRetryDB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tag, err := r.db.Exec(ctx, sql, args...)
	if retryable(ctx, err) {
		tag, err = r.db.Exec(ctx, sql, args...)
	}
	return tag, err
}

func (r safeRetryDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	rows, err := r.db.Query(ctx, sql, args...)
	if retryable(ctx, err) {
		return r.db.Query(ctx, sql, args...)
	}
	if err != nil {
		return rows, err
	}
	// A statement already prepared on the connection goes out with the
	// first read: its failure shows there.
	return &retryRows{Rows: rows, ctx: ctx, again: func() (pgx.Rows, error) { return r.db.Query(ctx, sql, args...) }}, nil
}

func (r safeRetryDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return retryRow{row: r.db.QueryRow(ctx, sql, args...), ctx: ctx, again: func() pgx.Row { return r.db.QueryRow(ctx, sql, args...) }}
}

// retryRow scans again from a fresh QueryRow when the first failed before
// reaching the server (a row's error shows only at Scan).
type retryRow struct {
	row   pgx.Row
	ctx   context.Context
	again func() pgx.Row
}

func (r retryRow) Scan(dest ...any) error {
	err := r.row.Scan(dest...)
	if retryable(r.ctx, err) {
		err = r.again().Scan(dest...)
	}
	return err
}

// retryRows runs the query again when its first read finds that it never
// reached the server (no row was seen, so the caller has seen nothing).
type retryRows struct {
	pgx.Rows
	ctx     context.Context
	again   func() (pgx.Rows, error)
	started bool
}

func (r *retryRows) Next() bool {
	if r.started {
		return r.Rows.Next()
	}
	r.started = true
	if r.Rows.Next() {
		return true
	}
	if !retryable(r.ctx, r.Rows.Err()) {
		return false
	}
	r.Rows.Close()
	rows, err := r.again()
	if rows == nil {
		rows = failedRows{err: err}
	}
	r.Rows = rows
	return r.Rows.Next()
}

// failedRows is a query that could not be sent.
type failedRows struct {
	pgx.Rows
	err error
}

func (f failedRows) Close()     {}
func (f failedRows) Err() error { return f.err }
func (f failedRows) Next() bool { return false }
func (f failedRows) Scan(...any) error {
	return f.err
}

// inTx runs f in a transaction on a pool connection and commits when f
// returns nil (as pgx.BeginFunc), retrying BEGIN once when it failed
// before reaching the server. f itself is not retried: once the
// transaction began, a broken connection may have run part of it.
func inTx(ctx context.Context, pool *pgxpool.Pool, f func(pgx.Tx) error) (err error) {
	tx, err := pool.Begin(ctx)
	if retryable(ctx, err) {
		tx, err = pool.Begin(ctx)
	}
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		// Rollback must run even when ctx is what ended f; after a commit
		// it does nothing.
		if rerr := tx.Rollback(context.WithoutCancel(ctx)); rerr != nil && !errors.Is(rerr, pgx.ErrTxClosed) && err == nil {
			err = rerr
		}
	}()
	if err := f(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
