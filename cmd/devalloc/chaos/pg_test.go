//go:build chaos

package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// harnessApp is the application_name of the harness's own connections, so
// that connection counts and pg_terminate_backend leave them out.
const harnessApp = "chaos-harness"

// sharedServerURL is the shared PostgreSQL server (a maintenance database on
// it): TEST_DATABASE_URL, else 127.0.0.1:5432 as postgres.
func sharedServerURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// withDatabase is u naming database name instead.
func withDatabase(u, name string) string {
	pu, err := url.Parse(u)
	if err != nil {
		panic(err)
	}
	pu.Path = "/" + name
	return pu.String()
}

// withParams is u with the query parameters params ("a=1&b=2") added.
func withParams(u, params string) string {
	if params == "" {
		return u
	}
	if strings.Contains(u, "?") {
		return u + "&" + params
	}
	return u + "?" + params
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// harnessConnConfig parses u for a harness connection: tagged with
// harnessApp, and immune to the database-level timeouts a scenario sets
// (startup-packet settings win over ALTER DATABASE ... SET).
func harnessConnConfig(u string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = harnessApp
	cfg.RuntimeParams["statement_timeout"] = "0"
	cfg.RuntimeParams["lock_timeout"] = "0"
	cfg.RuntimeParams["idle_in_transaction_session_timeout"] = "0"
	cfg.ConnectTimeout = 5 * time.Second
	return cfg, nil
}

// database is one scenario's database, with a small pool of harness
// connections on it for the checks and the DBA-style faults.
type database struct {
	name      string
	serverURL string // the maintenance database on the same server
	url       string // what the instances connect to
	admin     *pgxpool.Pool
}

// newDatabase creates a fresh database on the server of serverURL and drops
// it (WITH (FORCE)) when the test ends.
func newDatabase(t *testing.T, serverURL string) *database {
	t.Helper()
	d := &database{name: "chaos_" + randomHex(6), serverURL: serverURL}
	d.url = withDatabase(serverURL, d.name)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := execOn(ctx, serverURL, "CREATE DATABASE "+d.name); err != nil {
		t.Fatalf("create database %s: %v", d.name, err)
	}
	cfg, err := pgxpool.ParseConfig(d.url)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := harnessConnConfig(d.url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig = hc
	cfg.MaxConns = 4
	if d.admin, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := execOn(ctx, serverURL, "DROP DATABASE IF EXISTS "+d.name+" WITH (FORCE)"); err != nil {
			t.Logf("drop database %s: %v", d.name, err)
		}
	})
	return d
}

// execOn runs one statement on a fresh harness connection to u.
func execOn(ctx context.Context, u, sql string) error {
	cfg, err := harnessConnConfig(u)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// terminateAll ends every connection to the database but the harness's
// own: the instances' pools and their LISTEN connections alike.
func (d *database) terminateAll(ctx context.Context) (int, error) {
	var n int
	err := d.admin.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
		FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()
		  AND application_name IS DISTINCT FROM $1`, harnessApp).Scan(&n)
	return n, err
}

// connSample is one look at the database's connections (the harness's own
// left out).
type connSample struct {
	total int
	// idleInTx is how many sessions sit idle in a transaction, and
	// oldestIdleInTx how long the oldest has.
	idleInTx       int
	oldestIdleInTx time.Duration
}

func (d *database) sampleConns(ctx context.Context) (connSample, error) {
	var s connSample
	var oldest float64
	err := d.admin.QueryRow(ctx, `
		SELECT count(*),
		       count(*) FILTER (WHERE state LIKE 'idle in transaction%'),
		       coalesce(extract(epoch FROM max(now() - state_change) FILTER (WHERE state LIKE 'idle in transaction%')), 0)::float8
		FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()
		  AND application_name IS DISTINCT FROM $1
		  AND backend_type = 'client backend'`, harnessApp).Scan(&s.total, &s.idleInTx, &oldest)
	s.oldestIdleInTx = time.Duration(oldest * float64(time.Second))
	return s, err
}
