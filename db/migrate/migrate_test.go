package migrate_test

import (
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/dbtest"
	"github.com/devalloc/devalloc/db/migrate"
	"github.com/devalloc/devalloc/migrations"
)

func countMigrations(t *testing.T) int {
	t.Helper()
	entries, err := migrations.FS.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// Every migration rolls back cleanly, and many instances migrating one
// empty database at once apply each migration exactly once (goose's
// advisory-lock locker serialises them).
func TestDownThenConcurrentUp(t *testing.T) {
	url := dbtest.NewDB(t)
	n := countMigrations(t)

	m, err := migrate.Open(t.Context(), url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for range n {
		if err := m.Down(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var tables int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_tables WHERE schemaname = 'devalloc' AND tablename <> 'goose_db_version'`).Scan(&tables); err != nil || tables != 0 {
		t.Fatalf("after rolling everything back: %d tables (%v)", tables, err)
	}

	var wg sync.WaitGroup
	applied := make([]int, 5)
	errs := make([]error, 5)
	for i := range applied {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mi, err := migrate.Open(t.Context(), url, nil)
			if err != nil {
				errs[i] = err
				return
			}
			defer mi.Close()
			applied[i], errs[i] = mi.Up(t.Context())
		}()
	}
	wg.Wait()
	total := 0
	for i := range applied {
		if errs[i] != nil {
			t.Fatalf("instance %d: %v", i, errs[i])
		}
		total += applied[i]
	}
	if total != n {
		t.Fatalf("five instances applied %d migrations in all, want %d", total, n)
	}
	status, err := m.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range status {
		if s.State != "applied" {
			t.Fatalf("migration %d is %s", s.Source.Version, s.State)
		}
	}
}
