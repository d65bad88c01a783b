package db

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/dbtest"
	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/probe"
)

// fakeProber answers probes from a table of dead addresses, so tests can
// kill and revive devices without sockets.
type fakeProber struct {
	mu   sync.Mutex
	dead map[string]bool
}

func (f *fakeProber) Probe(ctx context.Context, kind probe.Kind, address string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dead[address] {
		return fmt.Errorf("%s %s: connection refused", kind, address)
	}
	return nil
}

func (f *fakeProber) setDead(address string, dead bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dead == nil {
		f.dead = map[string]bool{}
	}
	f.dead[address] = dead
}

// testConfig keeps background services quiet unless a test wants them:
// tests drive reap and health passes themselves.
func testConfig(p probe.Prober) Config {
	return Config{
		Prober:          p,
		ReapInterval:    time.Hour,
		RecheckInterval: time.Hour,
		HealthInterval:  time.Hour,
		Logger:          slog.New(slog.DiscardHandler),
	}
}

// newAllocator returns a started allocator on its own pool to url, as a
// separate instance would have.
func newAllocator(t testing.TB, url string, cfg Config) *Allocator {
	t.Helper()
	pool, err := dbtest.OpenPool(t.Context(), url)
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	a := New(pool, cfg)
	return started(t, a, pool)
}

// started starts a, stops it at cleanup and returns it once its listener
// is up (the instance is ready).
func started(t testing.TB, a *Allocator, pool *pgxpool.Pool) *Allocator {
	t.Helper()
	// Every test signal, before the services start (Init is not safe
	// against a running service); unread ones cost a buffered send.
	a.listener.Connects.Init()
	a.keeper.beat.Init()
	a.keeper.forgot.Init()
	a.rechecker.passed.Init()
	a.reaper.passed.Init()
	a.health.passed.Init()
	a.joined.Init()
	if err := a.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Stop()
		pool.Close()
	})
	a.listener.Connects.Wait(t, "the listener up", 10*time.Second)
	return a
}

// useQueries makes a, and each of its services, run their queries as q.
func (a *Allocator) useQueries(q *dbsqlc.Queries) {
	a.q = q
	a.reaper.q, a.health.q, a.pruner.q, a.rechecker.q, a.keeper.q = q, q, q, q, q
}

// newAllocatorThrough is newAllocator (default test config) whose queries
// go through the DBTX wrap builds over the pool: a test's way to lose,
// cut or delay chosen statements while every other one runs on
// PostgreSQL.
func newAllocatorThrough(t testing.TB, url string, wrap func(*pgxpool.Pool) dbsqlc.DBTX) *Allocator {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	a := New(pool, testConfig(&fakeProber{}))
	a.useQueries(dbsqlc.New(wrap(pool)))
	return started(t, a, pool)
}

// waitFor polls cond (a test signal, not a sleep) for up to 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func mustCreate(t *testing.T, a *Allocator, name, pool, address string, labels Labels) Device {
	t.Helper()
	return mustCreateProbed(t, a, name, pool, address, "tcp", labels)
}

// mustCreateProbed registers a device with the given probe kind ("none"
// devices are granted by the one-statement path, others by the
// transaction that probes).
func mustCreateProbed(t *testing.T, a *Allocator, name, pool, address, probeKind string, labels Labels) Device {
	t.Helper()
	d, err := a.CreateDevice(t.Context(), DeviceSpec{Name: name, Pool: pool, Labels: labels, Address: address, Probe: probeKind})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return d
}

func mustAcquire(t *testing.T, a *Allocator, req AcquireRequest) Lease {
	t.Helper()
	if req.Owner == "" {
		req.Owner = "tester"
	}
	l, err := a.Acquire(t.Context(), req)
	if err != nil {
		t.Fatalf("acquire %+v: %v", req.Selector, err)
	}
	return l
}

func mustDevice(t *testing.T, a *Allocator, name string) Device {
	t.Helper()
	d, err := a.GetDevice(t.Context(), name)
	if err != nil {
		t.Fatalf("get %s: %v", name, err)
	}
	return d
}

func endReason(err error) string {
	var ended *LeaseEndedError
	if errors.As(err, &ended) {
		return ended.Lease.EndReason
	}
	return ""
}

func newDB(t testing.TB) string {
	t.Helper()
	return dbtest.NewDB(t)
}

// silentInstance is another instance on a's pool that was never started:
// what it frees wakes nobody (no waiters of its own, no notifier running),
// as if the notification had been lost.
func silentInstance(a *Allocator) *Allocator {
	return New(a.pool, testConfig(&fakeProber{}))
}

// queueLength counts the pool's waiters in devalloc.waiters.
func queueLength(t testing.TB, a *Allocator, pool string) int {
	t.Helper()
	var n int
	if err := a.pool.QueryRow(t.Context(), `SELECT count(*) FROM devalloc.waiters WHERE pool = $1`, pool).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// dbaLock is a DBA's session, on its own connection, holding LOCK TABLE
// table IN mode MODE until the returned transaction ends (rolled back when
// the test ends at the latest).
func dbaLock(t *testing.T, url, table, mode string) pgx.Tx {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	tx, err := conn.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback(context.Background()) }) //nolint:errcheck // no-op once ended
	if _, err := tx.Exec(t.Context(), "LOCK TABLE "+table+" IN "+mode+" MODE"); err != nil {
		t.Fatal(err)
	}
	return tx
}

// awaitJoin waits until a request of owner is in the line at a (its row
// committed and still there): the join's signal, not a poll of the line.
// Joins of other owners at a are kept for their own waits; a join whose row
// has left the line already (an earlier request of owner that gave up, or
// was served) is passed over.
func awaitJoin(t testing.TB, a *Allocator, owner string) uuid.UUID {
	t.Helper()
	v, _ := joinsSeen.LoadOrStore(a, &seenJoins{})
	seen := v.(*seenJoins)
	seen.mu.Lock()
	defer seen.mu.Unlock()
	stillInLine := func(j joinedLine) bool {
		var in bool
		if err := a.pool.QueryRow(t.Context(), `SELECT EXISTS (SELECT 1 FROM devalloc.waiters WHERE id = $1)`, j.Waiter).Scan(&in); err != nil {
			t.Fatalf("is waiter %s in line: %v", j.Waiter, err)
		}
		return in
	}
	for i := 0; i < len(seen.joins); i++ {
		if j := seen.joins[i]; j.Owner == owner {
			seen.joins = append(seen.joins[:i], seen.joins[i+1:]...)
			i--
			if stillInLine(j) {
				return j.Waiter
			}
		}
	}
	for {
		j := a.joined.Wait(t, owner+"'s request in line", 10*time.Second)
		switch {
		case j.Owner != owner:
			seen.joins = append(seen.joins, j) // another owner's, for its own wait
		case stillInLine(j):
			return j.Waiter
		}
	}
}

// seenJoins keeps the joins an awaitJoin read while waiting for another
// owner's, per allocator (joinsSeen).
type seenJoins struct {
	mu    sync.Mutex
	joins []joinedLine
}

var joinsSeen sync.Map // *Allocator → *seenJoins
