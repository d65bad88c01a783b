package db

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/probe"
)

// The take-back of a handoff that never settles (see
// TestRetryTakesBackAHandoffThatNeverSettles), as the third review of
// issue 12 tried to break it.

// A request that reuses a key for a different request
// (ErrIdempotencyKeyReused, "changing nothing") meets the key's handoff
// while its waiter is still probing. It must be refused at once, not wait,
// take the handoff back and win the key with a grant of its own while the
// original, whose probe then passes, is told its key was reused.
func TestKeyReuseNeverTakesBackTheOriginalsHandoff(t *testing.T) {
	url := newDB(t)
	prober := newHeldProber()
	a := newAllocator(t, url, probedConfig(prober)) // probe timeout 10 s
	cfgB := testConfig(&fakeProber{})
	cfgB.ProbeTimeout = 200 * time.Millisecond // settle bound 1.4 s
	b := newAllocator(t, url, cfgB)
	mustCreate(t, a, "dev", "lab", "h:dev", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})

	original := goAcquire(t.Context(), a, keyed("w", "k", "lab", 20*time.Second))
	awaitJoin(t, a, "w")
	prober.hold("h:dev")
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	prober.awaitProbe(t, "h:dev")

	// Same owner and key, another holder: a different request.
	reuse := keyed("w", "k", "lab", 0)
	reuse.Holder = "job-2"
	start := time.Now()
	r, replayed, err := b.AcquireOrReplay(t.Context(), reuse)
	t.Logf("key reuse answered after %v: lease %s on %q (active %v) replayed=%v err=%v",
		time.Since(start), r.ID, r.Device.Name, r.Active(), replayed, err)

	// The original's probe passes (3 s in, well inside a's 10 s).
	prober.let("h:dev", nil)
	o := <-original
	t.Logf("original: lease %s on %q (active %v) err=%v", o.lease.ID, o.lease.Device.Name, o.lease.Active(), o.err)
	if err == nil {
		t.Errorf("key reuse was granted lease %s (201) instead of ErrIdempotencyKeyReused", r.ID)
	} else if !errors.Is(err, ErrIdempotencyKeyReused) && !errors.Is(err, errHandoffUnsettled) {
		t.Errorf("key reuse: %v; want ErrIdempotencyKeyReused (or 503), nothing changed", err)
	}
	if o.err != nil || !o.lease.Active() || o.lease.Device.Name != "dev" {
		t.Errorf("original request: lease %s (active %v) err=%v; want its handed device, whose probe passed", o.lease.ID, o.lease.Active(), o.err)
	}
	checkOneHolder(t, a)
	waitFlights(t, a)
	waitFlights(t, b)
}

// slowHealthyProber answers every probe after d (a slow but healthy device),
// within any probe timeout longer than d.
type slowHealthyProber struct{ d time.Duration }

func (p slowHealthyProber) Probe(ctx context.Context, _ probe.Kind, _ string) error {
	select {
	case <-time.After(p.d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// The same with one configuration everywhere: a reuse with another count
// has another settle bound, shorter than the group's probes take. A group of 4 probes its devices one after
// another (4 x 0.9 s, each inside the 1 s probe timeout); a key reuse for
// one device waits only (1+1) x 1 s + 1 s = 3 s, takes the group back while
// its waiter is healthy and still probing, and wins the key.
func TestKeyReuseWithAnotherCountNeverTakesBackAGroup(t *testing.T) {
	url := newDB(t)
	cfg := testConfig(slowHealthyProber{900 * time.Millisecond})
	cfg.ProbeOnHandoff = true
	cfg.ProbeTimeout = time.Second
	a := newAllocator(t, url, cfg)
	cfgB := testConfig(&fakeProber{})
	cfgB.ProbeTimeout = time.Second
	b := newAllocator(t, url, cfgB)
	var held []Lease
	for i := range 4 {
		mustCreate(t, a, fmt.Sprintf("d%d", i), "lab", fmt.Sprintf("h:%d", i), nil)
	}
	hq := AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder", Count: 4}
	hl := mustAcquire(t, b, hq)
	held = append(held, hl.Group...)

	req := keyed("w", "k", "lab", 20*time.Second)
	req.Count = 4
	original := goAcquire(t.Context(), a, req)
	awaitJoin(t, a, "w")
	for _, l := range held {
		if _, err := b.Release(t.Context(), l.ID); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the group's handoff pending", func() bool {
		var n int
		if err := a.pool.QueryRow(t.Context(), `SELECT count(*) FROM devalloc.leases WHERE owner = 'w' AND handoff_pending`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 4
	})
	reuse := keyed("w", "k", "lab", 0) // one device: another request
	start := time.Now()
	r, replayed, err := b.AcquireOrReplay(t.Context(), reuse)
	t.Logf("key reuse (count 1) answered after %v: lease %s on %q replayed=%v err=%v", time.Since(start), r.ID, r.Device.Name, replayed, err)
	o := <-original
	t.Logf("original group: lease %s (group of %d) err=%v", o.lease.ID, len(o.lease.Group), o.err)
	if err == nil {
		t.Errorf("key reuse was granted lease %s (201) instead of ErrIdempotencyKeyReused", r.ID)
	}
	if o.err != nil || len(o.lease.Group) != 4 {
		t.Errorf("original group of 4, healthy and probing within its timeout: err=%v, group of %d; want its 4 devices", o.err, len(o.lease.Group))
	}
	checkOneHolder(t, a)
	waitFlights(t, a)
	waitFlights(t, b)
}

// failNthEndLease fails the n-th EndLease (counted from arming) before it
// reaches the server, as a cut connection or a statement timeout would.
type failNthEndLease struct {
	dbsqlc.DBTX
	mu    sync.Mutex
	armed bool
	seen  int
	n     int
}

func (f *failNthEndLease) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	f.mu.Lock()
	if f.armed && strings.Contains(sql, "name: EndLease ") {
		f.seen++
		if f.seen == f.n {
			f.mu.Unlock()
			return errorRow{fmt.Errorf("end lease: %w", io.ErrUnexpectedEOF)}
		}
	}
	f.mu.Unlock()
	return f.DBTX.QueryRow(ctx, sql, args...)
}

// The take-back of a group ends one lease after another. When one fails
// after another ended (here the second of two), the group's key is given
// up already, so no later retry meets the rest: the re-check must finish
// the take-back, or the remaining lease stays pending, held by nobody,
// until its TTL.
func TestPartialTakeBackOfAGroupIsFinishedByTheRecheck(t *testing.T) {
	url := newDB(t)
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	wrap := &failNthEndLease{n: 2}
	c := newAllocatorThrough(t, url, func(p *pgxpool.Pool) dbsqlc.DBTX {
		wrap.DBTX = p
		return wrap
	})
	c.cfg.ProbeTimeout = 200 * time.Millisecond
	for _, name := range []string{"d1", "d2"} {
		mustCreate(t, b, name, "lab", "h:"+name, nil)
	}
	req := keyed("w", "k", "lab", 0)
	req.Count = 2
	req.TTL = time.Hour
	first, _, err := b.AcquireOrReplay(t.Context(), req)
	if err != nil || len(first.Group) != 2 {
		t.Fatalf("group: %v (%d)", err, len(first.Group))
	}
	// As a handoff to a waiter whose instance died mid-probe.
	if _, err := b.pool.Exec(t.Context(), `UPDATE devalloc.leases SET handoff_pending = true WHERE owner = 'w'`); err != nil {
		t.Fatal(err)
	}
	var waiter *uuid.UUID
	if err := b.pool.QueryRow(t.Context(), `SELECT waiter_id FROM devalloc.leases WHERE id = $1`, first.ID).Scan(&waiter); err != nil || waiter == nil {
		t.Fatalf("the group was not handed from the line (waiter %v, %v); the test needs waiter_id", waiter, err)
	}
	wrap.mu.Lock()
	wrap.armed = true
	wrap.mu.Unlock()
	_, _, err = c.AcquireOrReplay(t.Context(), req)
	t.Logf("retry 1 (one EndLease of the take-back cut): %v", err)
	wrap.mu.Lock()
	wrap.armed = false
	wrap.mu.Unlock()
	r, _, err := c.AcquireOrReplay(t.Context(), req)
	t.Logf("retry 2: lease %s (group of %d) err=%v", r.ID, len(r.Group), err)
	c.rechecker.pass(t.Context())
	b.rechecker.pass(t.Context())
	rows, err := b.pool.Query(t.Context(), `SELECT id, device_name, idempotency_key IS NOT NULL FROM devalloc.leases
		WHERE owner = 'w' AND released_at IS NULL AND handoff_pending`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id uuid.UUID
		var dev string
		var keyedLease bool
		if err := rows.Scan(&id, &dev, &keyedLease); err != nil {
			t.Fatal(err)
		}
		t.Errorf("lease %s on %s: still active and pending (keyed %v) after the take-back, the retries and a re-check on both instances: "+
			"nobody holds %s, and nothing will give it back before its TTL (1 h)", id, dev, keyedLease, dev)
	}
	waitFlights(t, b)
	waitFlights(t, c)
}

// The take-back's statements are bounded like the request's others: a
// request that may not wait, meeting an unsettled handoff whose row a DBA
// (or any long transaction) holds locked, is answered at about its settle
// bound, not 5 s (queueBound) per lease of the group later.
func TestTakeBackUnderARowLockAnswersWithinTheSettleBound(t *testing.T) {
	a, req, first := unsettledHandoff(t)
	tx, err := a.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(t.Context()))
	if _, err := tx.Exec(t.Context(), `SELECT 1 FROM devalloc.leases WHERE id = $1 FOR UPDATE`, first.ID); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, _, err = a.AcquireOrReplay(t.Context(), req)
	took := time.Since(start)
	t.Logf("answered after %v: %v", took, err)
	if limit := a.handoffSettleBound(1) + attemptBoundSlack + time.Second; took > limit {
		t.Errorf("a request that may not wait was answered after %v, past its settle bound %v (+ slack): the take-back's EndLease waited queueBound",
			took, a.handoffSettleBound(1))
	}
}

// beforeCancelDB runs before the next CancelWaiter once it is set: a
// test's way to hand the waiter a device just as its client leaves.
type beforeCancelDB struct {
	dbsqlc.DBTX
	mu     sync.Mutex
	before func()
}

func (d *beforeCancelDB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if strings.Contains(sql, "name: CancelWaiter ") {
		d.mu.Lock()
		f := d.before
		d.before = nil
		d.mu.Unlock()
		if f != nil {
			f()
		}
	}
	return d.DBTX.Exec(ctx, sql, args...)
}

// A keyed request's client leaves just as a device is handed to it. The
// handoff is confirmed for the retry, so it is probed first even though
// nobody waits for the answer: a retry must not be answered with a device
// nobody probed (here a dead one).
func TestHandoffToAKeyedRequestWhoseClientLeftIsProbedBeforeItIsConfirmed(t *testing.T) {
	url := newDB(t)
	wrap := &beforeCancelDB{}
	a := newAllocatorThrough(t, url, func(p *pgxpool.Pool) dbsqlc.DBTX {
		wrap.DBTX = p
		return wrap
	})
	a.cfg.ProbeOnHandoff = true
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, b, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})
	a.cfg.Prober.(*fakeProber).setDead("h:1", true) // as a's probes will find it

	ctx, cancel := context.WithCancel(t.Context())
	waiting := goAcquire(ctx, a, keyed("w", "k", "lab", 20*time.Second))
	awaitJoin(t, a, "w")
	handed := make(chan error, 1)
	wrap.mu.Lock()
	wrap.before = func() {
		_, err := b.Release(t.Context(), held.ID) // handed to the leaving waiter
		handed <- err
	}
	wrap.mu.Unlock()
	cancel()
	if err := <-handed; err != nil {
		t.Fatal(err)
	}
	<-waiting
	waitFlights(t, a)
	r, replayed, err := a.AcquireOrReplay(t.Context(), keyed("w", "k", "lab", 0))
	if err == nil && r.Device.Name == "d1" {
		t.Fatalf("retry answered with lease %s on d1 (replayed %v, active %v): a device nobody probed, and dead", r.ID, replayed, r.Active())
	}
}
