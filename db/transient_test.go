package db

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestIsTransient(t *testing.T) {
	for code, want := range map[string]bool{
		"08006": true, "57P01": true, "57P03": true, "40001": true, "40P01": true,
		"55P03": true, "57014": true, "53300": true,
		"23505": false, "22021": false, "42P01": false,
	} {
		err := fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: code})
		if got := IsTransient(err); got != want {
			t.Errorf("SQLSTATE %s: IsTransient = %v, want %v", code, got, want)
		}
	}
	if IsTransient(nil) || IsTransient(context.Canceled) || IsTransient(errors.New("bug")) || IsTransient(ErrNotFound) {
		t.Error("non-database errors are not transient")
	}
	if !IsTransient(pgconn.ErrConnClosed) {
		t.Error("a closed connection is transient")
	}
}

// Every connection of the database is killed while an acquire waits (its
// instance's pool and listener alike). The waiter rides it out: the freed
// device reaches it through reconnect and re-check, and its attempts on
// dead pool connections are retried instead of failing the request.
func TestWaiterSurvivesTerminatedConnections(t *testing.T) {
	url := newDB(t)
	cfg := testConfig(&fakeProber{})
	cfg.RecheckInterval = 200 * time.Millisecond
	a := newAllocator(t, url, cfg)
	mustCreate(t, a, "only", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	// Warm several pool connections so dead ones are left in the pool.
	for range 4 {
		if _, err := a.Pools(t.Context()); err != nil {
			t.Fatal(err)
		}
	}

	got := make(chan error, 1)
	go func() {
		_, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 15 * time.Second, Owner: "w"})
		got <- err
	}()
	awaitJoin(t, a, "w")

	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var killed int
	if err := conn.QueryRow(t.Context(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&killed); err != nil || killed < 2 {
		t.Fatalf("killed %d backends: %v", killed, err)
	}
	// The release, from a connection of its own, frees the device while the
	// waiter's instance has only dead connections.
	if _, err := conn.Exec(t.Context(), "SELECT id FROM devalloc.leases WHERE id = $1", held.ID); err != nil {
		t.Fatal(err)
	}
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	if _, err := b.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("waiter: %v", err)
		}
		t.Logf("waiter served %v after the release", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not served within 5 s of the release after its connections were killed")
	}
}

// A lock timeout inside the acquire transaction (a DBA holds the devices
// table) fails an attempt with a transient error: an acquire that may wait
// retries until the lock is gone; one that may not reports it as transient.
func TestAcquireRetriesALockTimeout(t *testing.T) {
	url := newDB(t)
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	cfg := testConfig(&fakeProber{})
	cfg.LockTimeout = 100 * time.Millisecond // each acquire statement waits at most this
	a := newAllocator(t, url+sep+"lock_timeout=100ms", cfg)
	mustCreate(t, a, "only", "lab", "h:1", nil)

	tx := dbaLock(t, url, "devalloc.devices", "ACCESS EXCLUSIVE")
	_, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "o"})
	if !IsTransient(err) {
		t.Fatalf("acquire without wait under a held lock: %v, want a transient error", err)
	}
	unlocked := make(chan struct{})
	time.AfterFunc(700*time.Millisecond, func() {
		defer close(unlocked)
		tx.Rollback(context.Background()) //nolint:errcheck // ends the lock
	})
	defer func() { <-unlocked }() // before dba closes
	start := time.Now()
	lease, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 10 * time.Second, Owner: "o"})
	if err != nil {
		t.Fatalf("acquire with wait under a held lock: %v", err)
	}
	if waited := time.Since(start); waited < 500*time.Millisecond {
		t.Fatalf("got %s after %v, before the lock was released", lease.Device.Name, waited)
	}
}

// A statement blocked behind a DBA's lock is cut when the request's wait
// is over (plus a little), not at the server's longer lock_timeout: the
// client hears back about when it asked to.
func TestBlockedAcquireEndsWithItsWait(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{})) // LockTimeout 5 s
	mustCreate(t, a, "only", "lab", "h:1", nil)
	dbaLock(t, url, "devalloc.leases", "EXCLUSIVE")
	start := time.Now()
	_, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: time.Second, Owner: "o"})
	took := time.Since(start)
	if !IsTransient(err) {
		t.Fatalf("err = %v, want a transient error (lock timeout)", err)
	}
	if took > 2500*time.Millisecond {
		t.Fatalf("a 1 s wait blocked by a lock answered after %v", took)
	}
	if d := mustDevice(t, a, "only"); d.State != StateIdle {
		t.Fatalf("device after the cut attempt: %+v", d)
	}
}
