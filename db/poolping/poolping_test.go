package poolping_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/dbtest"
	"github.com/devalloc/devalloc/db/poolping"
)

// TestServerSpoke: an idle connection whose backend was terminated is
// seen as spoken on (so the pool pings and replaces it); a healthy idle
// one is not.
func TestServerSpoke(t *testing.T) {
	url := dbtest.NewDB(t)
	ctx := t.Context()
	healthy, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer healthy.Close(context.Background())
	victim, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close(context.Background())
	if poolping.ServerSpoke(healthy.PgConn().Conn()) || poolping.ServerSpoke(victim.PgConn().Conn()) {
		t.Fatal("a healthy idle connection looks spoken on")
	}

	if _, err := healthy.Exec(ctx, "SELECT pg_terminate_backend($1, 5000)", victim.PgConn().PID()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !poolping.ServerSpoke(victim.PgConn().Conn()) {
		if time.Now().After(deadline) {
			t.Fatal("a terminated backend's connection does not look spoken on")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if poolping.ServerSpoke(healthy.PgConn().Conn()) {
		t.Fatal("the healthy connection looks spoken on after a statement")
	}
	// What the hook guards against: the statement fails and pgx cannot
	// call it safe to retry.
	_, err = victim.Exec(ctx, "SELECT 1")
	t.Logf("statement on the terminated connection: %v", err)
}
