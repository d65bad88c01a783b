package db

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// The sixth adversarial read (issue 12): the check that a handoff read back
// whole (collect) gave back, with ProbeOnHandoff off, leases that are
// nobody's to give back (never pending, so replayable at once). Each test
// failed before its fix.

// ProbeOnHandoff off at the waiter's instance (its leases are never
// pending). A keyed group of 2 is handed from the line; the waiter's
// instance is slow to read its leases back (outsized notice). The client's
// retry at another instance replays the group: 201 with both leases. The
// client releases one of them (done with d2). The waiter then reads its
// leases, finds 1 < Count and "gives back the rest": it ends the lease on
// d1, which the client was told it holds (201) and never released.
func TestUnprobedPartialReadNeverEndsAGroupAReplayAnswered(t *testing.T) {
	req := keyed("w", "k", "lab", 20*time.Second)
	req.Count = 2
	req.TTL = time.Hour
	f := newShortRead(t, req, nil)
	a, b, wrap, got := f.a, f.b, f.wrap, f.got

	replayed := make(chan result, 1)
	wrap.mu.Lock()
	wrap.before = func() {
		retry := req
		retry.Wait = 0
		l, rep, err := b.AcquireOrReplay(context.Background(), retry)
		replayed <- result{l, rep, err}
		if err != nil || len(l.Group) != 2 {
			t.Errorf("retry at b: %v group of %d", err, len(l.Group))
			return
		}
		// The client is done with d2 and releases it.
		for _, g := range l.Group {
			if g.Device.Name == "d2" {
				if _, err := b.Release(context.Background(), g.ID); err != nil {
					t.Errorf("release d2: %v", err)
				}
			}
		}
	}
	wrap.mu.Unlock()
	f.release(t)
	rr := <-replayed
	r := <-got
	t.Logf("replay at b: lease %s replayed=%v err=%v group of %d", rr.lease.ID, rr.replayed, rr.err, len(rr.lease.Group))
	t.Logf("first request at a: lease %s err=%v", r.lease.ID, r.err)
	waitFlights(t, a)
	waitFlights(t, b)
	time.Sleep(200 * time.Millisecond)
	for _, g := range rr.lease.Group {
		if g.Device.Name != "d1" {
			continue
		}
		l, err := b.GetLease(t.Context(), g.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !l.Active() {
			t.Errorf("lease %s on d1 was answered 201 (replay at b), never released by its client, and ended (%s) by the waiter's give-back at a, %v before its expires_at",
				l.ID, l.EndReason, time.Until(g.ExpiresAt).Round(time.Second))
		}
	}
}

// ProbeOnHandoff off, keyed group of 2, one of its leases revoked
// by an admin before the waiter reads its leases back (as in
// TestPartialGroupIsNeverConfirmed, but unprobed: nothing is pending, so
// the key stays on the surviving lease). collect: 1 < 2, giveBack = [the
// survivor]; waitInLine's keyed branch replays the key first (finds the
// survivor, active), answers 201 with it, then abandons giveBack: the very
// lease it answered with.
func TestUnprobedPartialReadNeverGivesBackItsAnswer(t *testing.T) {
	req := keyed("w", "k", "lab", 20*time.Second)
	req.Count = 2
	req.TTL = time.Hour
	f := newShortRead(t, req, nil)
	a, b, wrap, got := f.a, f.b, f.wrap, f.got
	wrap.mu.Lock()
	wrap.before = func() {
		// An admin revokes the group's lease that does not carry the key.
		var id string
		if err := b.pool.QueryRow(context.Background(), `SELECT id FROM devalloc.leases
			WHERE owner = 'w' AND released_at IS NULL AND idempotency_key IS NULL`).Scan(&id); err != nil {
			t.Errorf("keyless lease: %v", err)
			return
		}
		if _, err := b.pool.Exec(context.Background(), `SELECT 1`); err != nil {
			t.Error(err)
		}
		l, err := b.GetLease(context.Background(), mustUUID(t, id))
		if err != nil {
			t.Error(err)
			return
		}
		if _, err := b.Revoke(context.Background(), l.ID); err != nil {
			t.Errorf("revoke: %v", err)
		}
	}
	wrap.mu.Unlock()
	f.release(t)
	r := <-got
	t.Logf("acquire: lease %s on %s replayed=%v err=%v group of %d", r.lease.ID, r.lease.Device.Name, r.replayed, r.err, len(r.lease.Group))
	waitFlights(t, a)
	time.Sleep(200 * time.Millisecond)
	if r.err == nil {
		l, err := b.GetLease(t.Context(), r.lease.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !l.Active() {
			t.Errorf("the acquire answered 201 with lease %s on %s (expires %v) and its own instance ended it (%s) right after",
				l.ID, l.Device.Name, r.lease.ExpiresAt.Format(time.TimeOnly), l.EndReason)
		}
	}
}

// The same with the lease that carries the key revoked.
func TestUnprobedPartialReadWithTheKeysLeaseRevoked(t *testing.T) {
	req := keyed("w", "k", "lab", 20*time.Second)
	req.Count = 2
	req.TTL = time.Hour
	f := newShortRead(t, req, nil)
	a, b, wrap, got := f.a, f.b, f.wrap, f.got
	wrap.mu.Lock()
	wrap.before = func() {
		// An admin revokes the group's lease that carries the key.
		var id string
		if err := b.pool.QueryRow(context.Background(), `SELECT id FROM devalloc.leases
			WHERE owner = 'w' AND released_at IS NULL AND idempotency_key IS NOT NULL`).Scan(&id); err != nil {
			t.Errorf("the key's lease: %v", err)
			return
		}
		if _, err := b.pool.Exec(context.Background(), `SELECT 1`); err != nil {
			t.Error(err)
		}
		l, err := b.GetLease(context.Background(), mustUUID(t, id))
		if err != nil {
			t.Error(err)
			return
		}
		if _, err := b.Revoke(context.Background(), l.ID); err != nil {
			t.Errorf("revoke: %v", err)
		}
	}
	wrap.mu.Unlock()
	f.release(t)
	r := <-got
	t.Logf("acquire: lease %s on %s replayed=%v err=%v group of %d", r.lease.ID, r.lease.Device.Name, r.replayed, r.err, len(r.lease.Group))
	waitFlights(t, a)
	time.Sleep(200 * time.Millisecond)
	// An answer that says the lease is active must be true (the revoked
	// key's lease is answered as revoked, as its retries answer it).
	if r.err == nil && r.lease.Active() {
		l, err := b.GetLease(t.Context(), r.lease.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !l.Active() {
			t.Errorf("the acquire answered 201 with lease %s on %s (expires %v) and its own instance ended it (%s) right after",
				l.ID, l.Device.Name, r.lease.ExpiresAt.Format(time.TimeOnly), l.EndReason)
		}
	}
}

func mustUUID(t *testing.T, s string) uuid.UUID {
	t.Helper()
	id, err := uuid.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// ProbeOnHandoff off, UNKEYED group of 2. One lease of the handoff is
// revoked (an admin; or a device removal) before the waiter reads its leases
// back (outsized notice). No retry can have replayed anything (no key), yet
// collect now answers 201 with a group of 1 for Count 2 (the seventh read:
// a condition meant for keyed handoffs exempted every unprobed one).
func TestUnkeyedUnprobedPartialGroupIsNoAnswer(t *testing.T) {
	req := AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "w", Wait: 20 * time.Second, TTL: time.Hour, Count: 2}
	f := newShortRead(t, req, nil)
	b, wrap, got := f.b, f.wrap, f.got
	wrap.mu.Lock()
	wrap.before = func() {
		var id string
		if err := b.pool.QueryRow(context.Background(), `SELECT id FROM devalloc.leases
			WHERE owner = 'w' AND released_at IS NULL AND device_name = 'd2'`).Scan(&id); err != nil {
			t.Errorf("lease on d2: %v", err)
			return
		}
		if _, err := b.Revoke(context.Background(), mustUUID(t, id)); err != nil {
			t.Errorf("revoke: %v", err)
		}
	}
	wrap.mu.Unlock()
	f.release(t)
	r := <-got
	t.Logf("acquire: lease %s err=%v group of %d", r.lease.ID, r.err, len(r.lease.Group))
	if r.err == nil && len(r.lease.Group) != 2 {
		t.Errorf("an unkeyed request for a group of 2 (all or none) was answered 201 with a group of %d", len(r.lease.Group))
	}
}

// keyed, ProbeOnHandoff off, group of 2; the lease carrying the key is
// revoked before the waiter reads back. The waiter now answers 201 with the
// survivor (group of 1). A retry with the same key replays the key's lease:
// which answer does it give?
func TestUnprobedPartialReadAndItsRetryAnswerTheSameLease(t *testing.T) {
	req := keyed("w", "k", "lab", 20*time.Second)
	req.Count = 2
	req.TTL = time.Hour
	f := newShortRead(t, req, nil)
	a, b, wrap, got := f.a, f.b, f.wrap, f.got
	var keyDev string
	wrap.mu.Lock()
	wrap.before = func() {
		var id string
		if err := b.pool.QueryRow(context.Background(), `SELECT id, device_name FROM devalloc.leases
			WHERE owner = 'w' AND released_at IS NULL AND idempotency_key IS NOT NULL`).Scan(&id, &keyDev); err != nil {
			t.Errorf("the key's lease: %v", err)
			return
		}
		if _, err := b.Revoke(context.Background(), mustUUID(t, id)); err != nil {
			t.Errorf("revoke: %v", err)
		}
	}
	wrap.mu.Unlock()
	f.release(t)
	r := <-got
	t.Logf("key was on %s; first answer: lease %s on %s err=%v group of %d", keyDev, r.lease.ID, r.lease.Device.Name, r.err, len(r.lease.Group))
	waitFlights(t, a)
	retry := req
	retry.Wait = 0
	rr, replayed, rerr := b.AcquireOrReplay(t.Context(), retry)
	t.Logf("retry: lease %s on %s active=%v replayed=%v err=%v group of %d", rr.ID, rr.Device.Name, rr.Active(), replayed, rerr, len(rr.Group))
	// The key's lease was revoked before anyone answered: every answer
	// under the key is that lease, as it stands (revoked), never a
	// survivor that the retry would contradict.
	if r.err == nil && rerr == nil && (rr.ID != r.lease.ID || rr.Active() != r.lease.Active() || len(rr.Group) != len(r.lease.Group)) {
		t.Errorf("first answer 201 lease %s (active %v, group of %d); the retry with the same key answers lease %s (active=%v, end %q, group of %d)",
			r.lease.ID, r.lease.Active(), len(r.lease.Group), rr.ID, rr.Active(), rr.EndReason, len(rr.Group))
	}
}

// The eighth read: a keyed unprobed group read back short is answered with
// what its replay answers; when that replay failed (a lost connection, a
// timeout), the code went on and answered 201 with the survivors, a group
// of 1 for Count 2. Now the failure is the answer (transient) and the
// leases stay for the retry's replay.
func TestKeyedShortReadWhoseReplayFailsIsNoPartialGroup(t *testing.T) {
	fail := &failNamed{name: "GetLeaseByIdempotencyKey"}
	req := keyed("w", "k", "lab", 20*time.Second)
	req.Count = 2
	req.TTL = time.Hour
	f := newShortRead(t, req, func(p *pgxpool.Pool) dbsqlc.DBTX {
		fail.DBTX = p
		return fail
	})
	b, wrap, got := f.b, f.wrap, f.got
	wrap.mu.Lock()
	wrap.before = func() {
		var id string
		if err := b.pool.QueryRow(context.Background(), `SELECT id FROM devalloc.leases
			WHERE owner = 'w' AND released_at IS NULL AND device_name = 'd2'`).Scan(&id); err != nil {
			t.Errorf("lease on d2: %v", err)
			return
		}
		if _, err := b.Revoke(context.Background(), mustUUID(t, id)); err != nil {
			t.Errorf("revoke: %v", err)
		}
		fail.left.Store(1)
	}
	wrap.mu.Unlock()
	f.release(t)
	r := <-got
	t.Logf("acquire: lease %s on %s replayed=%v err=%v group of %d", r.lease.ID, r.lease.Device.Name, r.replayed, r.err, len(r.lease.Group))
	if r.err == nil && len(r.lease.Group) != 2 {
		t.Errorf("a request for a group of 2 was answered 201 with a group of %d (the key's replay failed once)", len(r.lease.Group))
	}
}

// outsized labels make a served notice too big to carry the leases: the
// waiter reads them back (as after a dispatch at its own instance or a
// re-check).
var outsized = Labels{"blob": strings.Repeat("x", 5000)}

// shortRead is the set-up of a group handoff read back short: d1 and d2,
// with labels too big for the served notice (so the waiter reads its
// leases back), held by "other" at b; req waits for both at a, whose
// queries go through wrap, so that a test's hook runs just before the
// waiter reads what it was handed; release frees both devices, to req.
type shortRead struct {
	url  string
	a, b *Allocator
	wrap *beforeWaiterLeasesDB
	got  <-chan result
	held [2]Lease
}

// newShortRead builds it; under (nil: the pool) stands between a's hook
// and the pool.
func newShortRead(t *testing.T, req AcquireRequest, under func(*pgxpool.Pool) dbsqlc.DBTX) *shortRead {
	return newShortReadProbed(t, req, under, false)
}

// newShortReadProbed is newShortRead whose waiter probes what it is handed
// (ProbeOnHandoff) when probes is set.
func newShortReadProbed(t *testing.T, req AcquireRequest, under func(*pgxpool.Pool) dbsqlc.DBTX, probes bool) *shortRead {
	t.Helper()
	url := newDB(t)
	f := &shortRead{url: url, wrap: &beforeWaiterLeasesDB{}}
	f.a = newAllocatorThrough(t, url, func(p *pgxpool.Pool) dbsqlc.DBTX {
		f.wrap.DBTX = p
		if under != nil {
			f.wrap.DBTX = under(p)
		}
		return f.wrap
	})
	f.a.cfg.ProbeOnHandoff = probes
	f.b = newAllocator(t, url, testConfig(&fakeProber{}))
	for i, name := range []string{"d1", "d2"} {
		mustCreate(t, f.b, name, "lab", "h:"+name, outsized)
		f.held[i] = mustAcquire(t, f.b, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})
	}
	f.got = goAcquire(t.Context(), f.a, req)
	awaitJoin(t, f.a, req.Owner)
	return f
}

// release frees both devices; the line hands them to req.
func (f *shortRead) release(t *testing.T) {
	t.Helper()
	for _, h := range f.held {
		if _, err := f.b.Release(t.Context(), h.ID); err != nil {
			t.Fatal(err)
		}
	}
}
