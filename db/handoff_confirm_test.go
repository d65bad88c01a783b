package db

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// The fifth adversarial read of handoffs under probe (issue 12): a group
// confirmed with a lease missing, a confirm for a client that left, a
// give-back deadlocking with a confirm, a renew told "ended" before a
// confirm. Each test failed before its fix.

// beforeWaiterLeasesDB runs a hook once, just before the next WaiterLeases
// query reaches PostgreSQL.
type beforeWaiterLeasesDB struct {
	dbsqlc.DBTX
	mu     sync.Mutex
	before func()
}

func (d *beforeWaiterLeasesDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if strings.Contains(sql, "name: WaiterLeases ") {
		d.mu.Lock()
		f := d.before
		d.before = nil
		d.mu.Unlock()
		if f != nil {
			// The hook stands for time before the read (a lost notice
			// learned at a re-check), not a slow read: the read gets its
			// own bound afresh.
			f()
			fresh, cancel := context.WithTimeout(context.WithoutCancel(ctx), attemptBoundSlack)
			defer cancel()
			return d.DBTX.Query(fresh, sql, args...)
		}
	}
	return d.DBTX.Query(ctx, sql, args...)
}

// A group handed from the line is read back with WaiterLeases (outsized
// notice, a dispatch at the waiter's own instance, a re-check), which lists
// only the ACTIVE leases handed to the waiter. One lease of the pending
// group ended before the read (an admin's revoke, a device removal, a
// take-back or stranded give-back between its statements): collect probes
// and confirms only what is left, confirm_handoff_until finds "all" of
// those live, and the client is answered 201 with a group of 1 where it
// asked for 2. The group's key went with the ended pending lease
// (pending_handoff_ends / pending_group_ends), so the confirmed lease has
// no key: a retry acquires a second group.
func TestPartialGroupIsNeverConfirmed(t *testing.T) {
	req := keyed("w", "k", "lab", 20*time.Second)
	req.Count = 2
	req.TTL = time.Hour
	f := newShortReadProbed(t, req, nil, true)
	a, b, wrap, got := f.a, f.b, f.wrap, f.got

	var revoked uuid.UUID
	wrap.mu.Lock()
	wrap.before = func() {
		// An admin revokes one lease of the pending group (it shows in
		// GET /v1/leases, handoff_pending true) just before the waiter
		// reads what it was handed.
		if err := b.pool.QueryRow(context.Background(), `SELECT id FROM devalloc.leases
			WHERE owner = 'w' AND released_at IS NULL AND device_name = 'd2'`).Scan(&revoked); err != nil {
			t.Errorf("pending lease on d2: %v", err)
			return
		}
		if _, err := b.Revoke(context.Background(), revoked); err != nil {
			t.Errorf("revoke: %v", err)
		}
	}
	wrap.mu.Unlock()
	f.release(t)
	r := <-got
	t.Logf("first answer: lease %s err=%v group of %d (revoked %s)", r.lease.ID, r.err, len(r.lease.Group), revoked)
	for _, l := range r.lease.Group {
		t.Logf("  group lease %s on %s active=%v", l.ID, l.Device.Name, l.Active())
	}
	if r.err == nil && len(r.lease.Group) != 2 {
		t.Errorf("a request for a group of 2 was answered (201) with a group of %d: confirm_handoff_until confirmed the leases WaiterLeases still listed after one of the pending group had ended",
			len(r.lease.Group))
	}
	// The retry the client would send had the answer been lost.
	mustCreate(t, b, "d3", "lab", "h:3", outsized)
	retry := req
	retry.Wait = 0
	rr, replayed, rerr := b.AcquireOrReplay(t.Context(), retry)
	t.Logf("retry: lease %s replayed=%v err=%v group of %d", rr.ID, replayed, rerr, len(rr.Group))
	if r.err == nil && rerr == nil && rr.ID != r.lease.ID {
		t.Errorf("the retry with the same key was answered with lease %s (replayed %v), not %s, the first answer, which is still active",
			rr.ID, replayed, r.lease.ID)
	}
	var active int
	if err := b.pool.QueryRow(t.Context(), `SELECT count(*) FROM devalloc.leases WHERE owner = 'w' AND released_at IS NULL`).Scan(&active); err != nil {
		t.Fatal(err)
	}
	t.Logf("owner w holds %d active leases", active)
	waitFlights(t, a)
	waitFlights(t, b)
}

// The same without any admin: the waiter's instance is slow to collect (its
// served notice was lost, or it is loaded), and a retry of the keyed group
// at another instance takes the unsettled handoff back. The take-back ends
// the key's lease, then the group's other leases, one autocommitted
// statement each; here the second one is cut (a dropped connection), so it
// is left for the re-check at the retry's instance. The waiter reads its
// leases in between, finds one, probes and confirms it: 201 with a group
// of 1, keyless. (Without the cut the window is one statement wide.)
func TestTakeBackCutBetweenItsStatementsNeverLeavesAPartialGroupToConfirm(t *testing.T) {
	req := keyed("w", "k", "lab", 20*time.Second)
	req.Count = 2
	req.TTL = time.Hour
	f := newShortReadProbed(t, req, nil, true)
	a, b, wrapA, got := f.a, f.b, f.wrap, f.got
	wrapC := &failNthEndLease{n: 2}
	c := newAllocatorThrough(t, f.url, func(p *pgxpool.Pool) dbsqlc.DBTX {
		wrapC.DBTX = p
		return wrapC
	})
	c.cfg.ProbeTimeout = 200 * time.Millisecond // settle bound 1.6 s for 2

	retried := make(chan result, 1)
	wrapA.mu.Lock()
	wrapA.before = func() {
		// While a is slow to read its leases, the client's retry reaches c.
		wrapC.mu.Lock()
		wrapC.armed = true
		wrapC.mu.Unlock()
		retry := req
		retry.Wait = 0
		l, rep, err := c.AcquireOrReplay(context.Background(), retry)
		wrapC.mu.Lock()
		wrapC.armed = false
		wrapC.mu.Unlock()
		retried <- result{l, rep, err}
	}
	wrapA.mu.Unlock()
	f.release(t)
	r := <-got
	rr := <-retried
	t.Logf("retry during the slow collect: lease %s err=%v", rr.lease.ID, rr.err)
	t.Logf("first answer: lease %s err=%v group of %d", r.lease.ID, r.err, len(r.lease.Group))
	if r.err == nil && len(r.lease.Group) != 2 {
		t.Errorf("a request for a group of 2 was answered (201) with a group of %d after a take-back cut between its statements", len(r.lease.Group))
	}
	c.rechecker.pass(t.Context()) // the take-back's mark: nothing pending is left to give back
	if r.err == nil {
		l, err := b.GetLease(t.Context(), r.lease.ID)
		t.Logf("after the re-check at c: the answered lease %s active=%v (err %v)", l.ID, l.Active(), err)
	}
	mustCreate(t, b, "d3", "lab", "h:3", outsized)
	retry := req
	retry.Wait = 0
	r2, replayed, err := b.AcquireOrReplay(t.Context(), retry)
	t.Logf("a later retry: lease %s replayed=%v err=%v group of %d", r2.ID, replayed, err, len(r2.Group))
	if r.err == nil && err == nil && r2.ID != r.lease.ID {
		t.Errorf("a later retry with the same key got lease %s (a second group), not the first answer %s", r2.ID, r.lease.ID)
	}
	waitFlights(t, a)
	waitFlights(t, b)
	waitFlights(t, c)
}

// An unkeyed request's client leaves while the waiter's confirm is held up
// (a row lock: a take-back, a reaper or a DBA on the lease). collect looked
// at ctx before the confirm, not after: the confirm commits, the answer goes
// to nobody, and the device stays leased to a gone client until its TTL.
// The direct grant (grant, attemptUnprobed) looks after its commit and
// gives the lease back.
func TestUnkeyedClientLeavingDuringConfirmLeavesNoLease(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	f := newUnderProbe(t, ctx, time.Hour, nil)
	b, prober, got, pending := f.b, f.prober, f.got, f.pending
	tx, err := b.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(t.Context()))
	if _, err := tx.Exec(t.Context(), `SELECT 1 FROM devalloc.leases WHERE id = $1 FOR UPDATE`, pending); err != nil {
		t.Fatal(err)
	}
	prober.let("h:dev", nil)
	waitFor(t, "the confirm blocked on the lease", func() bool {
		var n int
		if err := b.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '%confirm_handoff_until%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
	cancel() // the client leaves
	time.Sleep(50 * time.Millisecond)
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	r := <-got
	t.Logf("acquire (client gone): lease %s err=%v", r.lease.ID, r.err)
	time.Sleep(200 * time.Millisecond)
	var active bool
	if err := b.pool.QueryRow(t.Context(), `SELECT released_at IS NULL FROM devalloc.leases WHERE id = $1`, pending).Scan(&active); err != nil {
		t.Fatal(err)
	}
	if active {
		t.Errorf("lease %s on dev is active, confirmed for a client that left during the confirm: nobody holds dev until its TTL (1 h)", pending)
	}
}

// The take-back ends the key's lease first, so that the group trigger
// (pending_group_ends) never locks the key's lease behind a confirm. The
// re-check that finishes a take-back (or gives back a stranded keyed
// waiter's pending leases) ends them in WaiterLeases order, by device name:
// the same deadlock with a confirm, one of the two aborted after
// deadlock_timeout.
func TestRecheckGiveBackAndConfirmDoNotDeadlock(t *testing.T) {
	url := newDB(t)
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	c := newAllocator(t, url, testConfig(&fakeProber{}))
	_, lo, hi := pendingGroupKeyedOnItsFirstLock(t, b)
	var waiter *uuid.UUID
	if err := b.pool.QueryRow(t.Context(), `SELECT waiter_id FROM devalloc.leases WHERE id = $1`, lo).Scan(&waiter); err != nil || waiter == nil {
		t.Fatalf("waiter_id: %v %v", waiter, err)
	}
	// The waiter's confirm has locked the key's lease (id order) ...
	tx, err := b.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(t.Context()))
	if _, err := tx.Exec(t.Context(), `SELECT 1 FROM devalloc.leases WHERE id = $1 FOR UPDATE`, lo); err != nil {
		t.Fatal(err)
	}
	// ... as the re-check at c gives back the waiter's pending leases (its
	// take-back had failed on the first, the key's lease).
	c.stranded.add(*waiter, true)
	pass := make(chan struct{})
	go func() {
		c.rechecker.pass(context.Background())
		close(pass)
	}()
	waitFor(t, "the re-check's give-back blocked on the key's lease", func() bool {
		var n int
		if err := b.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '%name: EndLease%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
	var confirmed *time.Time
	cstart := time.Now()
	cerr := tx.QueryRow(t.Context(), `SELECT devalloc.confirm_handoff_until(ARRAY[$1::uuid, $2::uuid])`, lo, hi).Scan(&confirmed)
	if cerr == nil {
		cerr = tx.Commit(t.Context())
	}
	ctook := time.Since(cstart)
	<-pass
	left := c.stranded.snapshot()
	t.Logf("confirm: %v err=%v took %v; marks left at c: %v", confirmed, cerr, ctook, left)
	if len(left) > 0 && ctook > 900*time.Millisecond {
		t.Errorf("the confirm waited %v (deadlock_timeout) and the re-check's give-back was left for the next pass: they deadlocked (this time the re-check was the victim; when the confirm waits first, the confirm is, and the client is answered 503)", ctook)
	}
	if cerr != nil {
		t.Errorf("the waiter's confirm failed (%v): deadlocked with the re-check's give-back, which ended the groups' leases by device name, not the key's first", cerr)
	}
}

// A renew of a pending handoff whose first TTL ran out during its probe is
// answered "ended: expired" (endedError: pending only counts while
// expires_at is ahead), then the confirm starts the TTL over and the
// waiter's client is told 201 with that very lease: the owner was told the
// lease ended, and then that it holds it.
func TestRenewOfAPendingHandoffPastItsFirstTTLIsNotToldItEnded(t *testing.T) {
	f := newUnderProbe(t, t.Context(), time.Second, nil)
	b, prober, got, pending := f.b, f.prober, f.got, f.pending
	time.Sleep(1200 * time.Millisecond) // the first TTL runs out under the probe
	_, rerr := b.Renew(t.Context(), pending, time.Hour)
	t.Logf("renew of the pending lease: %v (end reason %q)", rerr, endReason(rerr))
	prober.let("h:dev", nil)
	r := <-got
	t.Logf("acquire: lease %s active=%v expires %v err=%v", r.lease.ID, r.lease.Active(), r.lease.ExpiresAt.Format(time.TimeOnly), r.err)
	if endReason(rerr) != "" && r.err == nil && r.lease.ID == pending {
		t.Errorf("lease %s: its owner's renew was told it ended (%s), then the acquire answered 201 with it", pending, endReason(rerr))
	}
}

// A group renew of a pending group was answered 404 (ErrNotFound: the
// query skips pending leases), where a single renew of one of its leases
// is answered 503: the owner of a group under its handoff probe was told
// the group does not exist, then 201 with it.
func TestRenewOfAPendingGroupIsRefusedForNow(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	mustCreate(t, a, "d2", "lab", "h:2", nil)
	g := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", Count: 2, TTL: time.Hour})
	if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.leases SET handoff_pending = true WHERE group_id = $1`, *g.GroupID); err != nil {
		t.Fatal(err)
	}
	_, err := a.RenewGroup(t.Context(), *g.GroupID, "w", time.Hour)
	if err == nil || !IsTransient(err) {
		t.Errorf("renew of a group under its handoff probe: %v; want a transient refusal (503, retry later), as for one of its leases", err)
	}
	if _, err := a.RenewGroup(t.Context(), *g.GroupID, "someone else", time.Hour); !errors.Is(err, ErrNotFound) {
		t.Errorf("renew of another owner's pending group: %v, want ErrNotFound", err)
	}
}

// beforeGetLeaseDB runs a hook once, just before the next GetLease.
type beforeGetLeaseDB struct {
	dbsqlc.DBTX
	mu     sync.Mutex
	before func()
}

func (d *beforeGetLeaseDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if strings.Contains(sql, "name: GetLease ") {
		d.mu.Lock()
		f := d.before
		d.before = nil
		d.mu.Unlock()
		if f != nil {
			f()
		}
	}
	return d.DBTX.QueryRow(ctx, sql, args...)
}

// a renew of a pending handoff races its confirm. RenewLease finds
// it pending (no row); the confirm commits; endedError reads it active, not
// pending, and calls it "lapsed but not reaped yet": LeaseEndedError
// (expired) although its expires_at is an hour ahead. Then the acquire
// answers 201 with it.
func TestRenewRacingTheConfirmIsNotToldExpired(t *testing.T) {
	wrap := &beforeGetLeaseDB{}
	f := newUnderProbe(t, t.Context(), time.Hour, func(url string) *Allocator {
		return newAllocatorThrough(t, url, func(p *pgxpool.Pool) dbsqlc.DBTX {
			wrap.DBTX = p
			return wrap
		})
	})
	c, prober, got, pending := f.b, f.prober, f.got, f.pending
	answered := make(chan result, 1)
	wrap.mu.Lock()
	wrap.before = func() {
		prober.let("h:dev", nil)
		answered <- <-got
	}
	wrap.mu.Unlock()
	_, rerr := c.Renew(t.Context(), pending, time.Hour)
	r := <-answered
	t.Logf("renew: %v (end reason %q); acquire: lease %s active=%v err=%v", rerr, endReason(rerr), r.lease.ID, r.lease.Active(), r.err)
	if endReason(rerr) != "" && r.err == nil && r.lease.ID == pending && r.lease.Active() {
		t.Errorf("lease %s: a renew was told it ended (%s) while the acquire answered 201 with it, live for an hour", pending, endReason(rerr))
	}
}

// failNamed fails the next left runs of one statement (by its sqlc name)
// with a lost connection; every other statement runs on PostgreSQL.
type failNamed struct {
	dbsqlc.DBTX
	name string
	left atomic.Int32
}

func (f *failNamed) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if strings.Contains(sql, "name: "+f.name+" ") && f.left.Add(-1) >= 0 {
		return errorRow{fmt.Errorf("%s: %w", f.name, io.ErrUnexpectedEOF)}
	}
	return f.DBTX.QueryRow(ctx, sql, args...)
}

// A handed device failed its probe and the statement ending its lease as
// probe_failed failed too: the lease stayed active and pending, held by
// nobody, until its TTL and settle bound had passed (up to a day), since
// nothing marked it for the re-check. Now the waiter is marked: the next
// re-check gives the lease back.
func TestFailedEndOfAFailedHandoffIsGivenBackByTheRecheck(t *testing.T) {
	url := newDB(t)
	wrap := &failNamed{name: "FailHandedLease"}
	prober := &fakeProber{}
	a := newAllocatorThrough(t, url, func(p *pgxpool.Pool) dbsqlc.DBTX {
		wrap.DBTX = p
		return wrap
	})
	a.cfg.ProbeOnHandoff = true
	a.cfg.Prober = prober
	b := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, b, "bad", "lab", "h:bad", nil)
	held := mustAcquire(t, b, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	ctx, cancel := context.WithCancel(t.Context())
	got := goAcquire(ctx, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", Wait: 20 * time.Second, TTL: time.Hour})
	awaitJoin(t, a, "w")
	prober.setDead("h:bad", true)
	wrap.left.Store(2) // the end, and its one retry
	if _, err := b.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the waiter back in line", func() bool { return wrap.left.Load() <= 0 && queueLength(t, a, "lab") == 1 })
	cancel()
	<-got
	a.rechecker.pass(t.Context())
	var active int
	if err := b.pool.QueryRow(t.Context(), `SELECT count(*) FROM devalloc.leases WHERE owner = 'w' AND released_at IS NULL`).Scan(&active); err != nil {
		t.Fatal(err)
	}
	if active != 0 {
		t.Errorf("%d lease(s) of the failed handoff still active after a re-check: held by nobody until TTL + settle bound", active)
	}
}
