package rawsql

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

// TestMain fails the package if a client, listener or notifier goroutine
// outlives its measurement.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// dbtest's admin pool lives for the whole test process.
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).backgroundHealthCheck"),
		goleak.IgnoreTopFunction("github.com/jackc/pgx/v5/pgxpool.(*Pool).triggerHealthCheck.func1"),
	)
}

// testContext bounds a test: each runs a few seconds of load at most.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// assertNoRawSchemas fails t if a measurement left one of its schemas
// behind.
func assertNoRawSchemas(ctx context.Context, t *testing.T, databaseURL string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer func() { _ = conn.Close(ctx) }()
	var left []string
	rows, err := conn.Query(ctx, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'raw%' ORDER BY 1")
	if err == nil {
		left, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		t.Fatalf("list schemas: %v", err)
	}
	if len(left) > 0 {
		t.Errorf("schemas left behind: %v", left)
	}
}
