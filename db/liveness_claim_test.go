package db

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// claimOn runs b's liveness claim on a fresh connection to url (what its
// listener does at every reconnect), closed when the test ends.
func claimOn(t *testing.T, b *Allocator, url string) (*pgx.Conn, error) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(t.Context()) })
	return conn, b.claimLiveness(t.Context(), conn)
}

// A listener that reconnects (after a failover, a restart, a cut
// connection) must get its instance's liveness lock although other
// instances' transactions hold it shared for a moment: while this
// instance's listener is down, every release that walks the line past its
// waiters and every waiting count asks devalloc.instance_alive, which takes
// the lock shared until commit. Under load one try nearly always meets one
// of them; the instance then stayed unready for seconds after a failover
// ("held by an older session of this instance", reconnect after reconnect).
func TestLivenessClaimWaitsOutAliveChecks(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	b := silentInstance(a)
	first, err := claimOn(t, b, url)
	if err != nil {
		t.Fatalf("first claim: %v", err)
	}
	id := b.instanceID.Load()
	// The first session is gone, as when the database failed over.
	if err := first.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first session's lock to go", func() bool {
		var alive bool
		if err := a.pool.QueryRow(t.Context(), `SELECT devalloc.instance_alive($1)`, id).Scan(&alive); err != nil {
			t.Fatal(err)
		}
		return !alive
	})

	// Another instance's transaction asks whether b is alive, and commits
	// 300 ms later.
	const held = 300 * time.Millisecond
	tx, err := a.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(t.Context())
	var alive bool
	if err := tx.QueryRow(t.Context(), `SELECT devalloc.instance_alive($1)`, id).Scan(&alive); err != nil || alive {
		t.Fatalf("instance_alive: %v, %v (want false)", alive, err)
	}
	committed := make(chan error, 1)
	go func() {
		time.Sleep(held)
		committed <- tx.Commit(t.Context())
	}()

	start := time.Now()
	_, err = claimOn(t, b, url)
	took := time.Since(start)
	if cerr := <-committed; cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatalf("reconnect claim while another transaction checked the instance alive: %v (after %v)", err, took.Round(time.Millisecond))
	}
	if b.instanceID.Load() != id {
		t.Fatalf("instance id changed from %d to %d", id, b.instanceID.Load())
	}
}

// An older session of this instance that still holds the lock (a
// connection the network cut off without a word) fails the claim, within a
// bound: the listener retries through its own backoff until it is gone.
func TestLivenessClaimRefusedWhileAnOlderSessionHoldsIt(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	b := silentInstance(a)
	if _, err := claimOn(t, b, url); err != nil {
		t.Fatalf("first claim: %v", err)
	}
	start := time.Now()
	_, err := claimOn(t, b, url)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "older session") {
		t.Fatalf("second claim while the first session holds the lock: %v, want the older-session error", err)
	}
	if bound := livenessClaimPatience + time.Second; took > bound {
		t.Fatalf("the refused claim took %v (bound %v)", took.Round(time.Millisecond), bound)
	}
}
