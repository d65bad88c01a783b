package db

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/dbtest"
)

// TestRequestsSurviveCutConnections: after every connection of the
// database was terminated (as a failover or a restart does), each kind of
// request still succeeds: the pool's dead connections are found and
// replaced before use instead of failing the request (57P01).
func TestRequestsSurviveCutConnections(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	keys := NewKeyStore(a.pool)
	ctx := t.Context()
	secret, _, err := keys.Create(ctx, "ci", RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"d1", "d2", "d3", "d4"} {
		mustCreateProbed(t, a, name, "p", "10.0.0."+string(rune('1'+i))+":22", "none", nil)
	}
	mustCreate(t, a, "t1", "q", "10.0.1.1:22", nil)
	req := AcquireRequest{Selector: Selector{Pool: "p"}, Owner: "ci", Holder: "test"}

	// Each step runs right after every connection was cut. The pool is
	// warmed first so that it holds several idle connections to lose.
	step := func(what string, f func() error) {
		t.Helper()
		warmPool(t, a.pool)
		if n := dbtest.CutConnections(t, url); n == 0 {
			t.Fatalf("%s: no connection was cut", what)
		}
		if err := f(); err != nil {
			t.Errorf("%s after the connections were cut: %v", what, err)
		}
	}

	var lease, waited, probed, group Lease
	step("acquire", func() (err error) { lease, err = a.Acquire(ctx, req); return err })
	step("acquire with wait", func() (err error) {
		r := req
		r.Wait = 2 * time.Second
		waited, err = a.Acquire(ctx, r)
		return err
	})
	step("probed acquire", func() (err error) {
		probed, err = a.Acquire(ctx, AcquireRequest{Selector: Selector{Pool: "q"}, Owner: "ci"})
		return err
	})
	step("keyed acquire", func() error {
		r := req
		r.IdempotencyKey = "k1"
		_, _, err := a.AcquireOrReplay(ctx, r)
		return err
	})
	step("renew", func() error { _, err := a.Renew(ctx, lease.ID, time.Minute); return err })
	step("release", func() error { _, err := a.Release(ctx, lease.ID); return err })
	step("release own", func() error { _, err := a.ReleaseOwn(ctx, waited.ID, "ci"); return err })
	step("revoke", func() error { _, err := a.Revoke(ctx, probed.ID); return err })
	step("key lookup", func() error { _, err := keys.Authenticate(ctx, secret); return err })
	step("list leases", func() error { _, err := a.ListLeases(ctx, LeaseFilter{}); return err })
	step("get lease", func() error { _, err := a.GetLease(ctx, lease.ID); return err })
	step("list devices", func() error { _, err := a.ListDevices(ctx, DeviceFilter{}); return err })
	step("get device", func() error { _, err := a.GetDevice(ctx, "d1"); return err })
	step("pools", func() error { _, err := a.Pools(ctx); return err })
	step("queue", func() error { _, err := a.Queue(ctx, QueueFilter{}); return err })
	step("list keys", func() error { _, err := keys.List(ctx); return err })
	step("update device", func() error {
		addr := "10.0.1.2:22"
		_, err := a.UpdateDevice(ctx, "t1", DevicePatch{Reason: "test", Address: &addr})
		return err
	})
	step("delete device", func() error { return a.DeleteDevice(ctx, "t1", false) })
	step("group acquire", func() (err error) {
		r := req
		r.Count = 2
		group, err = a.Acquire(ctx, r)
		return err
	})
	if group.GroupID == nil {
		t.Fatal("the group acquire made no group")
	}
	step("renew group", func() error { _, err := a.RenewGroup(ctx, *group.GroupID, "ci", time.Minute); return err })
	step("end group", func() error { _, err := a.EndGroup(ctx, *group.GroupID, EndReleased); return err })
}

// warmPool makes pool hold a few idle connections (to lose).
func warmPool(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	warm := make(chan error)
	for range 4 {
		go func() {
			_, err := pool.Exec(t.Context(), "SELECT pg_sleep(0.01)")
			warm <- err
		}()
	}
	for range 4 {
		if err := <-warm; err != nil {
			t.Fatalf("warm the pool: %v", err)
		}
	}
}

// breakIdleConnections closes the client side of every idle connection
// of pool behind pgx's back: the next statement on one fails in its write,
// before anything reached the server (pgconn.SafeToRetry).
func breakIdleConnections(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	idle := pool.AcquireAllIdle(t.Context())
	for _, c := range idle {
		if err := c.Conn().PgConn().Conn().Close(); err != nil {
			t.Fatal(err)
		}
		c.Release()
	}
	return len(idle)
}

// TestSafeToRetryFailuresAreRetried: a request whose statement fails
// before reaching the server (the connection broke under the write) is
// retried once on another connection instead of failing. The pool here
// never pings, so only the retry can save the request, and holds one
// connection, so the retry's connection is a fresh one.
func TestSafeToRetryFailuresAreRetried(t *testing.T) {
	url := newDB(t)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := New(pool, testConfig(&fakeProber{}))
	if err := a.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Stop()
		pool.Close()
	})
	keys := NewKeyStore(pool)
	ctx := t.Context()
	secret, _, err := keys.Create(ctx, "ci", RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"d1", "d2", "d3", "d4"} {
		mustCreateProbed(t, a, name, "p", "10.0.0."+string(rune('1'+i))+":22", "none", nil)
	}
	mustCreate(t, a, "t1", "q", "10.0.1.1:22", nil)
	req := AcquireRequest{Selector: Selector{Pool: "p"}, Owner: "ci", Holder: "test"}

	step := func(what string, f func() error) {
		t.Helper()
		pool.Reset() // connections an earlier step left broken
		warmPool(t, pool)
		if breakIdleConnections(t, pool) == 0 {
			t.Fatalf("%s: no idle connection to break", what)
		}
		if err := f(); err != nil {
			t.Errorf("%s on a broken connection: %v (safe to retry: %v)", what, err, pgconn.SafeToRetry(err))
		}
	}
	var lease, probed, group Lease
	step("acquire", func() (err error) { lease, err = a.Acquire(ctx, req); return err })
	step("probed acquire", func() (err error) {
		probed, err = a.Acquire(ctx, AcquireRequest{Selector: Selector{Pool: "q"}, Owner: "ci"})
		return err
	})
	step("renew", func() error { _, err := a.Renew(ctx, lease.ID, time.Minute); return err })
	step("release", func() error { _, err := a.Release(ctx, lease.ID); return err })
	step("revoke", func() error { _, err := a.Revoke(ctx, probed.ID); return err })
	step("key lookup", func() error { _, err := keys.Authenticate(ctx, secret); return err })
	step("list leases", func() error { _, err := a.ListLeases(ctx, LeaseFilter{}); return err })
	step("list devices", func() error { _, err := a.ListDevices(ctx, DeviceFilter{}); return err })
	step("update device", func() error {
		addr := "10.0.1.2:22"
		_, err := a.UpdateDevice(ctx, "t1", DevicePatch{Reason: "test", Address: &addr})
		return err
	})
	step("group acquire", func() (err error) {
		r := req
		r.Count = 2
		group, err = a.Acquire(ctx, r)
		return err
	})
	if group.GroupID == nil {
		t.Fatal("the group acquire made no group")
	}
	step("end group", func() error { _, err := a.EndGroup(ctx, *group.GroupID, EndReleased); return err })
}

// TestStatementsThatReachedTheServerAreNotResent guards the retry: a
// statement whose connection died after it reached the server may have
// run, so its error is returned and it is not sent again. The statement
// draws from a sequence (not rolled back) and then ends its own session.
func TestStatementsThatReachedTheServerAreNotResent(t *testing.T) {
	pool, _ := dbtest.NewPool(t)
	ctx := t.Context()
	if _, err := pool.Exec(ctx, "CREATE SEQUENCE resent"); err != nil {
		t.Fatal(err)
	}
	const stmt = "SELECT nextval('resent'), pg_terminate_backend(pg_backend_pid())"
	db := retrying(pool)
	runs := map[string]func() error{
		"Exec":     func() error { _, err := db.Exec(ctx, stmt); return err },
		"QueryRow": func() error { var n int64; var ok bool; return db.QueryRow(ctx, stmt).Scan(&n, &ok) },
		"Query": func() error {
			rows, err := db.Query(ctx, stmt)
			if err != nil {
				return err
			}
			for rows.Next() {
			}
			rows.Close()
			return rows.Err()
		},
	}
	var want int64
	for _, how := range []string{"Exec", "QueryRow", "Query"} {
		err := runs[how]()
		if err == nil {
			t.Fatalf("%s: a statement that ended its session succeeded", how)
		}
		want++
		var last int64
		if err := pool.QueryRow(ctx, "SELECT last_value FROM resent").Scan(&last); err != nil {
			t.Fatal(err)
		}
		if last != want {
			t.Fatalf("%s: the statement ran %d times, want once (err: %v)", how, last-want+1, err)
		}
		t.Logf("%s: %v (safe to retry: %v)", how, err, pgconn.SafeToRetry(err))
	}
}
