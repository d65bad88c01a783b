package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/keepalive"
	"github.com/devalloc/devalloc/db/poolping"
)

// connectTimeout bounds each connection attempt at start-up when the URL
// sets no connect_timeout, so an unreachable host fails in seconds.
const connectTimeout = 10 * time.Second

// SQLSTATEs that ensureDatabase tells apart.
const (
	sqlstateInvalidCatalogName = "3D000" // the database does not exist
	sqlstateDuplicateDatabase  = "42P04" // CREATE DATABASE lost a race
	sqlstateUniqueViolation    = "23505" // ... or lost it inside pg_database
	sqlstateObjectInUse        = "55006" // the template is busy
)

// parseConnConfig parses a database URL with a clear error, a bounded
// connect timeout and TCP keepalives (see tuneConn).
func parseConnConfig(databaseURL string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("invalid database URL (--database-url / DATABASE_URL): %s", oneLine(err))
	}
	if err := tuneConn(&cfg.Config); err != nil {
		return nil, fmt.Errorf("invalid database URL (--database-url / DATABASE_URL): %w", err)
	}
	return cfg, nil
}

// tuneConn bounds the connect time (unless the URL sets connect_timeout)
// and makes the connection notice a vanished peer within seconds on both
// ends: TCP keepalives and tcp_user_timeout on the client's socket, and
// the server's tcp_keepalives_* for the session (db/keepalive; libpq's
// keepalives* and tcp_user_timeout in the URL override the defaults).
// Without them the server keeps the session of a crashed host, and its
// instance's liveness lock, for 15 minutes to hours.
func tuneConn(cfg *pgconn.Config) error {
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = connectTimeout
	}
	return keepalive.Apply(cfg)
}

// checkDatabase connects once to the database that databaseURL names and
// explains in one line why that failed, if it did.
func checkDatabase(ctx context.Context, databaseURL string) error {
	cfg, err := parseConnConfig(databaseURL)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return connError(cfg, err)
	}
	return conn.Close(ctx)
}

// ensureDatabase makes sure the database that databaseURL names exists. When
// the server answers "no such database" (3D000) it connects to the
// maintenance database "postgres" on the same server and creates it. Many
// instances may start at once: losing the CREATE DATABASE race to another
// one is success too.
func ensureDatabase(ctx context.Context, databaseURL string, logger *slog.Logger) error {
	cfg, err := parseConnConfig(databaseURL)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err == nil {
		return conn.Close(ctx)
	}
	if sqlstate(err) != sqlstateInvalidCatalogName {
		return connError(cfg, err)
	}

	name := cfg.Database
	admin, err := connectMaintenance(ctx, cfg)
	if err != nil {
		return err
	}
	defer admin.Close(context.WithoutCancel(ctx))
	create := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	for attempt := 1; ; attempt++ {
		_, err = admin.Exec(ctx, create)
		if sqlstate(err) != sqlstateObjectInUse || attempt == 10 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
	}
	switch sqlstate(err) {
	case "":
		if err != nil {
			return connError(cfg, err)
		}
		logger.Info("created database", "database", name, "server", serverAddr(cfg.Config))
	case sqlstateDuplicateDatabase, sqlstateUniqueViolation:
		logger.Debug("database created meanwhile by another instance", "database", name)
	default:
		return fmt.Errorf("database %q does not exist on %s and creating it failed: %s",
			name, serverAddr(cfg.Config), pgMessage(err))
	}
	return nil
}

// connectMaintenance connects to the server's maintenance database,
// "postgres", falling back to template1 where "postgres" was dropped.
func connectMaintenance(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	var err error
	for _, db := range []string{"postgres", "template1"} {
		mcfg := cfg.Copy()
		mcfg.Database = db
		var conn *pgx.Conn
		if conn, err = pgx.ConnectConfig(ctx, mcfg); err == nil {
			return conn, nil
		}
		if sqlstate(err) != sqlstateInvalidCatalogName {
			break
		}
	}
	return nil, fmt.Errorf("database %q does not exist on %s, and devalloc cannot connect to the maintenance database to create it: %s",
		cfg.Database, serverAddr(cfg.Config), pgMessage(err))
}

// openPool opens the allocator's connection pool and checks that it works.
// sessionParams are set on every connection (unless the URL sets them).
func openPool(ctx context.Context, databaseURL string, maxConns int, sessionParams map[string]string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("invalid database URL (--database-url / DATABASE_URL): %s", oneLine(err))
	}
	cfg.MaxConns = int32(min(maxConns, 1<<30))
	for k, v := range sessionParams {
		if _, set := cfg.ConnConfig.RuntimeParams[k]; !set {
			cfg.ConnConfig.RuntimeParams[k] = v
		}
	}
	if err := tuneConn(&cfg.ConnConfig.Config); err != nil {
		return nil, fmt.Errorf("invalid database URL (--database-url / DATABASE_URL): %w", err)
	}
	// A connection the server closed (failover, restart, terminated
	// backend) is replaced before use rather than failing a request.
	poolping.Apply(cfg)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, connError(cfg.ConnConfig, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, connError(cfg.ConnConfig, err)
	}
	return pool, nil
}

// listenConfig parses --listen-database-url; nil when it is empty (the
// listener then uses the pool's settings).
func listenConfig(url string) (*pgx.ConnConfig, error) {
	if url == "" {
		return nil, nil
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, usageError{error: fmt.Errorf("invalid --listen-database-url: %s", oneLine(err))}
	}
	// The listener's session holds the instance's liveness lock: of all
	// connections it most needs to end with its host.
	if err := tuneConn(&cfg.Config); err != nil {
		return nil, usageError{error: fmt.Errorf("invalid --listen-database-url: %w", err)}
	}
	return cfg, nil
}

// connError turns a failed connection into one line an operator can act on.
func connError(cfg *pgx.ConnConfig, err error) error {
	addr := serverAddr(cfg.Config)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == sqlstateInvalidCatalogName:
			return hintError{
				msg:  fmt.Sprintf("database %q does not exist on %s", cfg.Database, addr),
				hint: `"devalloc serve" and "devalloc migrate up" create it; or fix DATABASE_URL`,
			}
		case strings.HasPrefix(pgErr.Code, "28"):
			return hintError{
				msg:  fmt.Sprintf("PostgreSQL at %s refused user %q: %s", addr, cfg.User, pgErr.Message),
				hint: "Check the user and password in DATABASE_URL",
			}
		}
		return fmt.Errorf("PostgreSQL at %s: %s", addr, pgMessage(err))
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	return hintError{
		msg:  fmt.Sprintf("cannot reach PostgreSQL at %s (%s)", addr, reachReason(err)),
		hint: "Start PostgreSQL or set DATABASE_URL",
		err:  err,
	}
}

// hintError is a failure followed by what to do about it, as full sentences.
type hintError struct {
	msg, hint string
	err       error
}

func (e hintError) Error() string { return e.msg + ". " + e.hint + "." }
func (e hintError) Unwrap() error { return e.err }

// reachReason names why no connection was made, in a few words.
func reachReason(err error) string {
	var dnsErr *net.DNSError
	var netErr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.As(err, &dnsErr):
		return "unknown host " + dnsErr.Name
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timed out"
	case errors.Is(err, syscall.ENOENT):
		return "no server socket there"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "host unreachable"
	}
	// The innermost error is the one that names the cause.
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return oneLine(err)
		}
		err = next
	}
}

// serverAddr is host:port, or the socket path for a Unix-domain socket.
func serverAddr(cfg pgconn.Config) string {
	port := strconv.Itoa(int(cfg.Port))
	if strings.HasPrefix(cfg.Host, "/") {
		return cfg.Host + "/.s.PGSQL." + port
	}
	return net.JoinHostPort(cfg.Host, port)
}

func sqlstate(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// pgMessage is the server's message (with its SQLSTATE) when there is one.
func pgMessage(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return fmt.Sprintf("%s (SQLSTATE %s)", pgErr.Message, pgErr.Code)
	}
	if err == nil {
		return "unknown error"
	}
	return oneLine(err)
}
