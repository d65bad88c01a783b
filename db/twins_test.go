package db

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Retries of one keyed request ("twins": same owner and idempotency key)
// waiting in line at two instances of one database.

// twinWait is long enough that a twin left to wait out its window is told
// apart from one answered at once.
const twinWait = 8 * time.Second

// twinPrompt is how soon a twin must be answered once its key has a lease.
const twinPrompt = 3 * time.Second

// twins is the set-up: instances a and b over one database, pool "lab" of
// n devices all held by "other", and a keyed request of alice's (key k,
// count devices) waiting in line at both.
type twins struct {
	url    string
	a, b   *Allocator
	held   []Lease
	ra, rb <-chan result
	req    AcquireRequest
}

func newTwins(t *testing.T, n, count int) *twins {
	t.Helper()
	tw := &twins{url: newDB(t)}
	tw.a = newAllocator(t, tw.url, testConfig(&fakeProber{}))
	tw.b = newAllocator(t, tw.url, testConfig(&fakeProber{}))
	for i := range n {
		mustCreate(t, tw.a, "d"+string(rune('1'+i)), "lab", "h:"+string(rune('1'+i)), nil)
		tw.held = append(tw.held, mustAcquire(t, tw.a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"}))
	}
	tw.req = keyed("alice", "k", "lab", twinWait)
	tw.req.Count = count
	tw.ra = goAcquire(t.Context(), tw.a, tw.req)
	waitFor(t, "the first twin in line", func() bool { return queueLength(t, tw.a, "lab") == 1 })
	tw.rb = goAcquire(t.Context(), tw.b, tw.req)
	waitFor(t, "both twins in line", func() bool { return queueLength(t, tw.a, "lab") == 2 })
	return tw
}

// answers waits for both twins, each within within of now, and checks they
// got one lease: the same id, active, exactly one of them granted and the
// other replayed, and one lease row carrying the key.
func (tw *twins) answers(t *testing.T, within time.Duration) Lease {
	t.Helper()
	start := time.Now()
	deadline := time.After(within)
	var got [2]result
	for i, ch := range []<-chan result{tw.ra, tw.rb} {
		select {
		case got[i] = <-ch:
			t.Logf("twin %d answered %v after its key's grant (replayed %v)", i, time.Since(start).Round(time.Millisecond), got[i].replayed)
		case <-deadline:
			t.Fatalf("twin %d not answered within %v of its key's grant (it waits out its window)", i, within)
		}
	}
	if got[0].err != nil || got[1].err != nil {
		t.Fatalf("twin a: %v, twin b: %v", got[0].err, got[1].err)
	}
	if got[0].lease.ID != got[1].lease.ID || !got[0].lease.Active() {
		t.Fatalf("the twins got %s and %s (active %v), want one live lease", got[0].lease.ID, got[1].lease.ID, got[0].lease.Active())
	}
	if got[0].replayed == got[1].replayed {
		t.Errorf("replayed: a %v, b %v; want exactly one replay", got[0].replayed, got[1].replayed)
	}
	if n, _ := leaseRows(t, tw.a, "alice", "k"); n != 1 {
		t.Fatalf("%d leases carry the key, want 1", n)
	}
	if n := queueLength(t, tw.a, "lab"); n != 0 {
		t.Errorf("%d rows left in line", n)
	}
	checkOneHolder(t, tw.a)
	waitFlights(t, tw.a)
	waitFlights(t, tw.b)
	return got[0].lease
}

// A retry at another instance while the first waits. Two devices freed at
// once: one twin is granted one, the other is answered at once with that
// same lease (replayed), not left in line, holding the pool's line up,
// until its window closes; the second device stays idle.
func TestRetriesWaitingAtTwoInstancesGetOneLease(t *testing.T) {
	tw := newTwins(t, 2, 1)
	for _, h := range tw.held {
		if _, err := tw.b.Release(t.Context(), h.ID); err != nil {
			t.Fatal(err)
		}
	}
	tw.answers(t, twinPrompt)
	if _, leased := leaseRows(t, tw.a, "alice", "k"); leased != 1 {
		t.Fatalf("%d devices leased, want 1", leased)
	}
}

// A group request waiting at two instances: the dispatcher gathers the
// group for one twin; the other is told and replays the group.
func TestGroupTwinIsToldWhenTheOtherGetsTheGroup(t *testing.T) {
	tw := newTwins(t, 2, 2)
	for _, h := range tw.held {
		if _, err := tw.a.Release(t.Context(), h.ID); err != nil {
			t.Fatal(err)
		}
	}
	l := tw.answers(t, twinPrompt)
	if len(l.Group) != 2 {
		t.Fatalf("the group has %d leases, want 2", len(l.Group))
	}
}

// answeredWith waits for r, within within, and checks it is a replay of
// the lease want.
func answeredWith(t *testing.T, who string, r <-chan result, within time.Duration, want uuid.UUID) {
	t.Helper()
	select {
	case got := <-r:
		if got.err != nil || got.lease.ID != want || !got.replayed {
			t.Fatalf("%s: %s replayed=%v err=%v, want a replay of %s", who, got.lease.ID, got.replayed, got.err, want)
		}
	case <-time.After(within):
		t.Fatalf("%s not answered within %v of its key's grant (it waits out its window)", who, within)
	}
}

// A retry waits in line while another instance grants its key directly
// (without the line, which a grant racing the retry's join can do): the
// grant removes the retry's row and tells its instance, which replays the
// lease at once.
func TestDirectGrantTellsTheTwinWaitingElsewhere(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})
	twin := goAcquire(t.Context(), b, keyed("alice", "k", "lab", twinWait))
	waitFor(t, "the twin in line", func() bool { return queueLength(t, a, "lab") == 1 })

	g := openRetryGrant(t, url, held, "alice", "k")
	if err := g.tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	answeredWith(t, "the twin", twin, twinPrompt, g.lease)
	if n := queueLength(t, a, "lab"); n != 0 {
		t.Errorf("%d rows left in line", n)
	}
	checkOneHolder(t, a)
	waitFlights(t, b)
}

// A retry joins the line while a release is granting its key to its twin
// (the release has not committed yet): the join must not put a row in line
// that nothing will serve; it waits for the grant and answers with its
// lease at once.
func TestJoinAfterTheKeysGrantReplaysAtOnce(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})
	first := goAcquire(t.Context(), a, keyed("alice", "k", "lab", twinWait))
	waitFor(t, "the first in line", func() bool { return queueLength(t, a, "lab") == 1 })

	tx, ended := openRelease(t, url, held.ID)
	if ended.HandedTo == nil {
		t.Fatalf("the release handed its device to nobody: %+v", ended)
	}
	retry := goAcquire(t.Context(), b, keyed("alice", "k", "lab", twinWait))
	// The retry's join either waits on the grant or is written.
	waitFor(t, "the retry to join or wait on the grant", func() bool {
		return lockWaiters(t, a) > 0 || b.Hub().Waiting("lab") == 1
	})
	time.Sleep(100 * time.Millisecond)
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	r := <-first
	if r.err != nil || !r.lease.Active() || r.replayed {
		t.Fatalf("the first: %+v replayed=%v err=%v, want its granted lease", r.lease, r.replayed, r.err)
	}
	answeredWith(t, "the retry", retry, twinPrompt, r.lease.ID)
	if n := queueLength(t, a, "lab"); n != 0 {
		t.Errorf("%d rows left in line", n)
	}
	checkOneHolder(t, a)
	waitFlights(t, a)
	waitFlights(t, b)
}

// A key with a lease is not put in line: nothing would ever serve the row
// (the line skips a key that has a lease), and it would hold the pool's
// line up until its window closed.
func TestEnqueueRefusesAKeyThatHasALease(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	req := keyed("alice", "k", "lab", 0)
	req.TTL = time.Minute
	req.fingerprint = req.fingerprintOf()
	if _, err := a.Acquire(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	_, _, err := a.enqueue(t.Context(), req, uuid.New(), nil, queueBound)
	if n := queueLength(t, a, "lab"); n != 0 {
		t.Fatalf("the key's join was put in line (%d rows, err %v)", n, err)
	}
	if !errors.Is(err, errKeyHasLease) {
		t.Fatalf("join: %v, want errKeyHasLease", err)
	}
}

// A direct grant of a key waits for the line's claim on it (the key's
// advisory lock, held by a grant from the line to its commit): otherwise
// the line, seeing the key free, grants it too and its statement fails on
// the unique index when the direct grant commits first.
// Both direct grants: the acquire transaction's (GrantLease, a device to
// probe) and the one-statement grant's (GrantUnprobed).
func TestDirectGrantWaitsForTheLinesClaimOnTheKey(t *testing.T) {
	for _, kind := range []string{"tcp", "none"} {
		t.Run("probe="+kind, func(t *testing.T) { directGrantWaitsForTheClaim(t, kind) })
	}
}

func directGrantWaitsForTheClaim(t *testing.T, probeKind string) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreateProbed(t, a, "d1", "lab", "h:1", probeKind, nil)
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // no-op once committed
	// The line's claim, as devalloc.claim_idempotency_key takes it.
	if _, err := tx.Exec(t.Context(), `SELECT pg_advisory_xact_lock(1685482611, hashtext('alice' || chr(31) || 'k'))`); err != nil {
		t.Fatal(err)
	}
	direct := goAcquire(t.Context(), a, keyed("alice", "k", "lab", 0))
	waitFor(t, "the direct grant to finish or wait on the claim", func() bool {
		return lockWaiters(t, a) > 0 || len(direct) > 0
	})
	if len(direct) > 0 {
		r := <-direct
		t.Fatalf("the direct grant went ahead of the line's claim on its key: %s %v", r.lease.ID, r.err)
	}
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if r := <-direct; r.err != nil || !r.lease.Active() {
		t.Fatalf("the direct grant after the claim: %+v %v", r.lease, r.err)
	}
	waitFlights(t, a)
}
