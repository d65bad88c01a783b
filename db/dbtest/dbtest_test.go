package dbtest

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

func TestNewDBIsolatedAndMigrated(t *testing.T) {
	ctx := t.Context()
	poolA, urlA := NewPool(t)
	poolB, urlB := NewPool(t)
	if urlA == urlB {
		t.Fatalf("two calls returned the same database %q", urlA)
	}

	for _, p := range []*pgxpool.Pool{poolA, poolB} {
		for _, table := range []string{"devalloc.devices", "devalloc.leases"} {
			var reg *string
			if err := p.QueryRow(ctx, "SELECT to_regclass($1)::text", table).Scan(&reg); err != nil {
				t.Fatalf("to_regclass(%s): %v", table, err)
			}
			if reg == nil {
				t.Errorf("table %s missing in %s", table, redact(p.Config().ConnString()))
			}
		}
	}

	if _, err := poolA.Exec(ctx, "INSERT INTO devalloc.devices (name, address) VALUES ('only-in-a', '127.0.0.1:1')"); err != nil {
		t.Fatalf("insert into A: %v", err)
	}
	if n := countDevices(t, poolA); n != 1 {
		t.Errorf("A has %d devices, want 1", n)
	}
	if n := countDevices(t, poolB); n != 0 {
		t.Errorf("B has %d devices, want 0: databases are not isolated", n)
	}
}

func TestNewDBDroppedAtCleanup(t *testing.T) {
	var dbURL string
	ok := t.Run("use", func(t *testing.T) {
		dbURL = NewDB(t)
		if !databaseExists(t, dbURL) {
			t.Fatalf("database of %s does not exist while the test runs", redact(dbURL))
		}
	})
	if !ok {
		return
	}
	if databaseExists(t, dbURL) {
		t.Errorf("database of %s still exists after the subtest's cleanup", redact(dbURL))
	}
}

func TestNewDBParallel(t *testing.T) {
	// Concurrent clones of the same template, as parallel tests do.
	for i := range 8 {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			pool, _ := NewPool(t)
			if _, err := pool.Exec(t.Context(), "INSERT INTO devalloc.devices (name, address) VALUES ($1, 'x:1')", fmt.Sprint("dev-", i)); err != nil {
				t.Fatal(err)
			}
			if n := countDevices(t, pool); n != 1 {
				t.Errorf("got %d devices, want 1", n)
			}
		})
	}
}

func TestWithDatabase(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{
			"postgres://u:p%40ss@h1:5433,h2:5434/admin?sslmode=require&application_name=x",
			"postgres://u:p%40ss@h1:5433,h2:5434/devalloc_test_1?sslmode=require&application_name=x",
		},
		{
			"postgresql://u@h/admin?dbname=other&sslmode=disable",
			"postgresql://u@h/devalloc_test_1?sslmode=disable",
		},
		{
			"host=h port=5433 user=u dbname=admin sslmode=disable",
			"host=h port=5433 user=u dbname=admin sslmode=disable dbname=devalloc_test_1",
		},
	} {
		got, err := withDatabase(tc.in, "devalloc_test_1")
		if err != nil {
			t.Fatalf("withDatabase(%q): %v", tc.in, err)
		}
		if got != tc.want {
			t.Errorf("withDatabase(%q) = %q, want %q", tc.in, got, tc.want)
		}
		cfg, err := pgx.ParseConfig(got)
		if err != nil {
			t.Fatalf("pgx cannot parse %q: %v", got, err)
		}
		if cfg.Database != "devalloc_test_1" {
			t.Errorf("pgx reads database %q from %q", cfg.Database, got)
		}
	}
}

func countDevices(t *testing.T, p *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := p.QueryRow(t.Context(), "SELECT count(*) FROM devalloc.devices").Scan(&n); err != nil {
		t.Fatalf("count devices: %v", err)
	}
	return n
}

// databaseExists asks the admin connection, since the database itself may
// be gone.
func databaseExists(t *testing.T, dbURL string) bool {
	t.Helper()
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	var exists bool
	err = shared.admin.QueryRow(context.Background(),
		"SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", cfg.Database).Scan(&exists)
	if err != nil {
		t.Fatalf("look up database %q: %v", cfg.Database, err)
	}
	return exists
}
