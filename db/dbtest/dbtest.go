// Package dbtest gives each test its own freshly migrated PostgreSQL
// database.
//
// Migrating for every test would be slow, so the migrations run once per
// server into a template database named after a hash of the embedded
// migration files; each test then gets a cheap CREATE DATABASE ... TEMPLATE
// copy that it drops again at cleanup.
//
// The server is found once per test process: TEST_DATABASE_URL if set,
// otherwise PostgreSQL on localhost:5432, otherwise a testcontainers
// container (which needs a Docker engine).
package dbtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"

	"github.com/devalloc/devalloc/db/migrate"
	"github.com/devalloc/devalloc/db/poolping"
	"github.com/devalloc/devalloc/migrations"
)

const (
	// localURL is where a developer's or CI's PostgreSQL usually listens.
	localURL = "postgres://postgres@localhost:5432/postgres?sslmode=disable"
	// containerImage is started only when no other server is reachable.
	containerImage = "postgres:15-alpine"

	// templateLockKey serialises template builds across all test processes
	// that share a server (go test runs packages as parallel processes).
	templateLockKey = 0x64657661_6c6c6f63 // "devalloc"

	// sqlstateObjectInUse is "database is being accessed by other users".
	sqlstateObjectInUse = "55006"
)

// server is the process-wide admin side: a PostgreSQL server on which
// databases can be created, and the migrated template to clone.
type server struct {
	url      string        // admin connection URL; test URLs are derived from it
	admin    *pgxpool.Pool // kept open for the process lifetime
	template string        // name of the fully migrated template database
}

var (
	setupOnce sync.Once
	shared    *server
	setupErr  error
)

// NewDB returns the URL of a fresh, fully migrated database that belongs to
// this test only, and drops it (WITH (FORCE)) at t.Cleanup.
func NewDB(t testing.TB) string {
	t.Helper()
	setupOnce.Do(func() { shared, setupErr = setup(t) })
	if setupErr != nil {
		t.Fatal(setupErr)
	}
	s := shared

	name := "devalloc_test_" + randomHex(8)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	create := "CREATE DATABASE " + quote(name) + " TEMPLATE " + quote(s.template)
	if err := retryInUse(ctx, func() error {
		_, err := s.admin.Exec(ctx, create)
		return err
	}); err != nil {
		t.Fatalf("dbtest: clone template %q into %q: %v", s.template, name, oneLine(err))
	}

	t.Cleanup(func() {
		// t.Context() is already cancelled when cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := s.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+quote(name)+" WITH (FORCE)"); err != nil {
			t.Logf("dbtest: drop database %q: %v", name, oneLine(err))
		}
	})

	dbURL, err := withDatabase(s.url, name)
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	return dbURL
}

// NewPool is NewDB plus a *pgxpool.Pool on it, closed at cleanup.
func NewPool(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	dbURL := NewDB(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	pool, err := OpenPool(ctx, dbURL)
	if err != nil {
		t.Fatalf("dbtest: open pool: %v", oneLine(err))
	}
	// Registered after NewDB's cleanup, so it runs first: the pool is gone
	// before the database is dropped.
	t.Cleanup(pool.Close)
	if err := pool.Ping(ctx); err != nil {
		t.Fatalf("dbtest: ping test database: %v", oneLine(err))
	}
	return pool, dbURL
}

// OpenPool opens a pool on url set up as devalloc serve sets up its own:
// idle connections the server closed are found before use (db/poolping).
func OpenPool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	poolping.Apply(cfg)
	return pgxpool.NewWithConfig(ctx, cfg)
}

// CutConnections terminates every other session on the database that url
// names, as a failover or a restart would, and waits until they are gone.
// It returns how many it terminated.
func CutConnections(t testing.TB, url string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("dbtest: cut connections: connect: %v", oneLine(err))
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM (
		SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t`).Scan(&n); err != nil {
		t.Fatalf("dbtest: cut connections: %v", oneLine(err))
	}
	return n
}

// setup finds a server and makes sure the template exists on it. Its
// error is reported by every NewDB, so it is a single self-contained line.
func setup(t testing.TB) (*server, error) {
	t.Helper()
	ctx := context.Background()
	s, err := findServer(ctx)
	if err != nil {
		return nil, err
	}
	t.Logf("dbtest: using PostgreSQL at %s", redact(s.url))

	name, err := templateName()
	if err != nil {
		return nil, fmt.Errorf("dbtest: %w", err)
	}
	buildCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := s.ensureTemplate(buildCtx, name); err != nil {
		s.admin.Close()
		return nil, fmt.Errorf("dbtest: prepare template %q: %s", name, oneLine(err))
	}
	s.template = name
	return s, nil
}

// findServer tries TEST_DATABASE_URL, then localhost:5432, then a
// container, and returns the first that answers.
func findServer(ctx context.Context) (*server, error) {
	if envURL := os.Getenv("TEST_DATABASE_URL"); envURL != "" {
		// The user named this server; falling back elsewhere would hide
		// their mistake, so its error is final.
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		s, err := connect(ctx, envURL)
		if err != nil {
			return nil, fmt.Errorf("dbtest: TEST_DATABASE_URL: %s", oneLine(err))
		}
		return s, nil
	}

	localCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, localErr := connect(localCtx, localURL)
	if localErr == nil {
		return s, nil
	}

	s, containerErr := startContainer(ctx)
	if containerErr == nil {
		return s, nil
	}

	return nil, fmt.Errorf("dbtest: no PostgreSQL: set TEST_DATABASE_URL=postgres://user@host:port/db, "+
		"run one on localhost:5432, or start a Docker engine for testcontainers "+
		"(localhost:5432: %s; testcontainers: %s)", oneLine(localErr), oneLine(containerErr))
}

// connect opens the small admin pool and checks the server answers.
func connect(ctx context.Context, adminURL string) (*server, error) {
	cfg, err := pgxpool.ParseConfig(adminURL)
	if err != nil {
		return nil, fmt.Errorf("parse url: %w", err)
	}
	// Only CREATE/DROP DATABASE and the template lock run here.
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open admin pool: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return &server{url: adminURL, admin: pool}, nil
}

// startContainer runs PostgreSQL in Docker. The container is left for
// testcontainers' reaper (Ryuk) to remove when this process exits, since
// a package has no hook that runs at process end.
func startContainer(ctx context.Context) (s *server, err error) {
	// Without a Docker engine testcontainers may panic rather than return.
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("panic: %v", r)
		}
	}()
	// Bounded so a missing or wedged Docker cannot stall the tests for long.
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	ctr, err := tcpostgres.Run(ctx, containerImage, tcpostgres.BasicWaitStrategies())
	if err != nil {
		if ctr != nil {
			_ = testcontainers.TerminateContainer(ctr)
		}
		return nil, err
	}
	connURL, err := ctr.ConnectionString(ctx, "sslmode=disable")
	if err == nil {
		s, err = connect(ctx, connURL)
	}
	if err != nil {
		_ = testcontainers.TerminateContainer(ctr)
		return nil, err
	}
	return s, nil
}

// templateName derives the template's name from the migrations, so a
// changed migration gets a new template instead of a stale one.
func templateName() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(migrations.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(migrations.FS, path)
		if err != nil {
			return err
		}
		// NUL separators keep name/content boundaries unambiguous.
		fmt.Fprintf(h, "%s\x00%d\x00", path, len(data))
		h.Write(data)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("hash migrations: %w", err)
	}
	return "devalloc_tmpl_" + hex.EncodeToString(h.Sum(nil))[:12], nil
}

// ensureTemplate makes sure a completely migrated database called name
// exists. Under a session advisory lock (so parallel test processes build
// it only once) it migrates a scratch database, name_partial, and renames
// it to name last. A database called name therefore always holds the whole
// schema, and a crashed build leaves only a _partial that the next build
// drops and redoes.
func (s *server) ensureTemplate(ctx context.Context, name string) error {
	conn, err := s.admin.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire admin connection: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(templateLockKey)); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	defer func() {
		unlockCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(unlockCtx, "SELECT pg_advisory_unlock($1)", int64(templateLockKey)); err != nil {
			// Closing the session is the other way to release the lock;
			// the pool discards the closed connection on Release.
			_ = conn.Conn().Close(unlockCtx)
		}
	}()

	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look for template: %w", err)
	}
	if exists {
		return nil
	}

	partial := name + "_partial"
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+quote(partial)+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop leftover %q: %w", partial, err)
	}
	// template0 keeps anything added to template1 on this server out.
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+quote(partial)+" TEMPLATE template0"); err != nil {
		return fmt.Errorf("create %q: %w", partial, err)
	}
	partialURL, err := withDatabase(s.url, partial)
	if err != nil {
		return err
	}
	if err := migrate.Up(ctx, partialURL, nil); err != nil {
		return fmt.Errorf("migrate %q: %w", partial, err)
	}
	// CREATE DATABASE ... TEMPLATE fails while anyone is connected to the
	// template, so refuse connections to it from now on; the clones get
	// the default ALLOW_CONNECTIONS true.
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+quote(partial)+" WITH ALLOW_CONNECTIONS false"); err != nil {
		return fmt.Errorf("close %q to connections: %w", partial, err)
	}
	// The migrator's backends may still be exiting after it disconnected,
	// and RENAME needs the database to be unused.
	rename := "ALTER DATABASE " + quote(partial) + " RENAME TO " + quote(name)
	if err := retryInUse(ctx, func() error {
		_, err := conn.Exec(ctx, rename)
		return err
	}); err != nil {
		return fmt.Errorf("rename %q: %w", partial, err)
	}
	return nil
}

// retryInUse runs f again, with a short backoff, while PostgreSQL reports
// that a database involved is being accessed by other users: parallel
// processes clone the same template, and backends exit asynchronously.
func retryInUse(ctx context.Context, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	delay := 20 * time.Millisecond
	for {
		err := f()
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != sqlstateObjectInUse {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("still in use after retrying: %w", err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
}

// withDatabase returns serverURL pointing at database name, keeping the
// user, password, hosts, port and every other parameter.
func withDatabase(serverURL, name string) (string, error) {
	if !strings.HasPrefix(serverURL, "postgres://") && !strings.HasPrefix(serverURL, "postgresql://") {
		// Keyword/value form: pgx lets a later keyword override an earlier one.
		return serverURL + " dbname=" + name, nil
	}
	u, err := url.Parse(serverURL)
	if err != nil {
		return "", fmt.Errorf("parse database url: %w", err)
	}
	u.Path, u.RawPath = "/"+name, ""
	// A dbname query parameter would override the path.
	if q := u.Query(); q.Has("dbname") || q.Has("database") {
		q.Del("dbname")
		q.Del("database")
		u.RawQuery = q.Encode()
	}
	return u.String(), nil
}

// redact hides a URL's password for logs.
func redact(s string) string {
	if u, err := url.Parse(s); err == nil && u.Scheme != "" {
		return u.Redacted()
	}
	return "(keyword/value connection string)"
}

func quote(name string) string { return pgx.Identifier{name}.Sanitize() }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b)
}

// oneLine flattens pgx's multi-line errors (one line per host tried) so a
// failure reads as a single line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
