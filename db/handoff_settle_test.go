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
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// A handoff under probe (handoff_pending) holds its request's idempotency
// key until the probe settles. The other ways a request meets that key (a
// direct grant at another instance, a twin told of the key's lease, the
// re-check giving a stranded waiter's leases back) must wait for the
// settling and act on its outcome, never answer 500 or 503 because the
// probe took longer than a statement, nor end a lease the probe just
// confirmed (issue 12, second review).

// A retry at another instance is probing an idle device for its direct
// grant when the first request's handoff from the line (pending, under
// probe) takes the key: the grant conflicts on it. The handoff's probe then
// fails, the handed lease ends and gives the key up, and there is no lease
// to replay: the retry must try again (and get a live device), not answer
// "idempotency key conflicts, but no lease has it".
func TestDirectGrantBehindAPendingHandoffThatFailsGetsALiveDevice(t *testing.T) {
	url := newDB(t)
	proberA, proberB := newHeldProber(), newHeldProber()
	a := newAllocator(t, url, probedConfig(proberA))
	b := newAllocator(t, url, probedConfig(proberB))
	mustCreate(t, a, "flaky", "lab", "h:flaky", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "holder"})
	mustCreate(t, a, "spare", "lab", "h:spare", nil)

	// The retry (at b) is probing the spare, its row locked, when the
	// first request (at a) finds nothing idle and joins the line.
	proberB.hold("h:spare")
	retry := goAcquire(t.Context(), b, keyed("w", "k", "lab", 20*time.Second))
	proberB.awaitProbe(t, "h:spare")
	waiting := goAcquire(t.Context(), a, keyed("w", "k", "lab", 20*time.Second))
	awaitJoin(t, a, "w")
	proberA.hold("h:flaky")
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	proberA.awaitProbe(t, "h:flaky")
	// The spare answers; the retry's grant meets the pending handoff's key.
	proberB.let("h:spare", nil)
	notYet(t, retry, "while the key's handoff was under probe")
	proberA.let("h:flaky", fmt.Errorf("connection refused"))

	w, r := <-waiting, <-retry
	if r.err != nil {
		t.Fatalf("retry at the other instance: %v; want the live lease of the spare", r.err)
	}
	if w.err != nil || w.lease.ID != r.lease.ID || w.lease.Device.Name != "spare" || !w.lease.Active() {
		t.Fatalf("first request: lease %s on %s (active %v) err=%v; retry: lease %s on %s; want one live lease of the spare",
			w.lease.ID, w.lease.Device.Name, w.lease.Active(), w.err, r.lease.ID, r.lease.Device.Name)
	}
}

// twinsOverProbes is newTwins with a's handoffs probed through prober: a
// pool of flaky (a's twin first in line) and good, both held by "other".
func twinsOverProbes(t *testing.T, prober *heldProber) *twins {
	t.Helper()
	tw := &twins{url: newDB(t)}
	tw.a = newAllocator(t, tw.url, probedConfig(prober))
	tw.b = newAllocator(t, tw.url, probedConfig(&fakeProber{}))
	for _, name := range []string{"flaky", "good"} {
		mustCreate(t, tw.a, name, "lab", "h:"+name, nil)
		tw.held = append(tw.held, mustAcquire(t, tw.a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"}))
	}
	tw.req = keyed("alice", "k", "lab", 20*time.Second)
	tw.ra = goAcquire(t.Context(), tw.a, tw.req)
	waitFor(t, "the first twin in line", func() bool { return queueLength(t, tw.a, "lab") == 1 })
	tw.rb = goAcquire(t.Context(), tw.b, tw.req)
	waitFor(t, "both twins in line", func() bool { return queueLength(t, tw.a, "lab") == 2 })
	return tw
}

// release ends the held lease of the named device.
func (tw *twins) release(t *testing.T, name string) {
	t.Helper()
	for _, l := range tw.held {
		if l.Device.Name == name {
			if _, err := tw.a.Release(t.Context(), l.ID); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("no held lease of %s", name)
}

// A twin is told its key has a lease (the other twin's handoff) while that
// handoff is still under probe. A probe takes up to ProbeTimeout, longer
// than a statement's slack: the twin waits for it and is answered with
// the confirmed lease, not 503 after half a second.
func TestTwinToldOfAPendingHandoffWaitsForItsProbe(t *testing.T) {
	prober := newHeldProber()
	tw := twinsOverProbes(t, prober)
	prober.hold("h:flaky")
	tw.release(t, "flaky")
	prober.awaitProbe(t, "h:flaky")
	notYet(t, tw.rb, "while its twin's handoff was under probe")
	// Longer than any statement's slack (attemptBoundSlack): a probe of a
	// slow device takes seconds.
	notYet(t, tw.rb, "while its twin's handoff was under probe")
	notYet(t, tw.rb, "while its twin's handoff was under probe")
	notYet(t, tw.rb, "while its twin's handoff was under probe")
	prober.let("h:flaky", nil)
	l := tw.answers(t, 10*time.Second)
	if l.Device.Name != "flaky" {
		t.Fatalf("the twins got %s, want the flaky device that answered its probe", l.Device.Name)
	}
}

// The same, when the probe fails: the told twin goes back in line (its
// request may still wait) and both twins get the next device.
func TestTwinToldOfAFailedHandoffGoesBackInLine(t *testing.T) {
	prober := newHeldProber()
	tw := twinsOverProbes(t, prober)
	prober.hold("h:flaky")
	tw.release(t, "flaky")
	prober.awaitProbe(t, "h:flaky")
	for range 4 {
		notYet(t, tw.rb, "while its twin's handoff was under probe")
	}
	prober.let("h:flaky", fmt.Errorf("connection refused"))
	waitFor(t, "the flaky device offline", func() bool { return mustDevice(t, tw.a, "flaky").State == StateOffline })
	notYet(t, tw.rb, "after its twin's handoff failed (nothing is idle)")
	tw.release(t, "good")
	l := tw.answers(t, 10*time.Second)
	if l.Device.Name != "good" {
		t.Fatalf("the twins got %s, want the good device", l.Device.Name)
	}
}

// confirmRaceDB loses the answer of the next ConfirmHandoff (the client is
// told an error, so its keyed waiter is left to the re-check) while the
// statement itself waits at a gate; the next EndLease after that opens the
// gate and lets the confirm commit first, as a confirm in flight on a
// connection whose answer was lost would commit while the re-check reads
// the handed leases and gives them back.
type confirmRaceDB struct {
	dbsqlc.DBTX
	pool *pgxpool.Pool

	mu        sync.Mutex
	armed     bool          // the next ConfirmHandoff is lost
	gate      chan struct{} // closed by the EndLease that follows
	confirmed chan error    // the lost confirm's own outcome
	raced     chan struct{} // closed once the EndLease ran behind the confirm
}

func (c *confirmRaceDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.armed && strings.Contains(sql, "name: ConfirmHandoff "):
		c.armed = false
		c.gate = make(chan struct{})
		c.confirmed = make(chan error, 1)
		gate := c.gate
		go func() {
			<-gate
			var confirmed bool
			var expires time.Time
			c.confirmed <- c.pool.QueryRow(context.Background(), sql, args...).Scan(&confirmed, &expires)
		}()
		// As pgx reports a connection that died before the answer.
		return errorRow{fmt.Errorf("confirm's answer lost: %w", io.ErrUnexpectedEOF)}
	case c.gate != nil && strings.Contains(sql, "name: EndLease "):
		close(c.gate)
		c.gate = nil
		if err := <-c.confirmed; err != nil {
			return errorRow{fmt.Errorf("the lost confirm failed: %w", err)}
		}
		defer close(c.raced)
	}
	return c.DBTX.QueryRow(ctx, sql, args...)
}

// errorRow is a row whose Scan fails with err.
type errorRow struct{ err error }

func (r errorRow) Scan(...any) error { return r.err }

// The confirm of a keyed handoff loses its answer: the client is told an
// error, and the re-check is to give back what is still pending. The
// confirm commits while the re-check gives back: the lease it confirmed is
// a retry's answer now and must stay in force (or, ended, give its key up).
// An ended lease that keeps its key is replayed to the retry as a success.
func TestGiveBackRacingALostConfirmNeverEndsTheConfirmedLease(t *testing.T) {
	url := newDB(t)
	race := &confirmRaceDB{raced: make(chan struct{})}
	a := newAllocatorThrough(t, url, func(p *pgxpool.Pool) dbsqlc.DBTX {
		race.DBTX, race.pool = p, p
		return race
	})
	a.cfg.ProbeOnHandoff = true
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, Owner: "other"})

	waiting := goAcquire(t.Context(), a, keyed("w", "k", "lab", 20*time.Second))
	awaitJoin(t, a, "w")
	race.mu.Lock()
	race.armed = true
	race.mu.Unlock()
	if _, err := a.Release(t.Context(), held.ID); err != nil {
		t.Fatal(err)
	}
	if w := <-waiting; w.err == nil {
		t.Fatalf("the waiter was answered with lease %s; want the lost confirm's error", w.lease.ID)
	}
	a.rechecker.pass(t.Context())
	select {
	case <-race.raced:
	case <-time.After(10 * time.Second):
		t.Fatal("the re-check gave nothing back: the race was not run")
	}

	var released bool
	var key *string
	var lease uuid.UUID
	if err := a.pool.QueryRow(t.Context(), `SELECT id, released_at IS NOT NULL, idempotency_key FROM devalloc.leases
		WHERE device_id = (SELECT id FROM devalloc.devices WHERE name = 'd1') ORDER BY acquired_at DESC LIMIT 1`).
		Scan(&lease, &released, &key); err != nil {
		t.Fatal(err)
	}
	if released && key != nil {
		t.Fatalf("lease %s, confirmed, was ended by the give-back and kept its key %q: a retry is answered with a dead lease", lease, *key)
	}
	r, replayed, err := a.AcquireOrReplay(t.Context(), keyed("w", "k", "lab", 0))
	if err != nil && !errors.Is(err, ErrNoDevice) {
		t.Fatalf("retry: %v", err)
	}
	if err == nil && !r.Active() {
		t.Fatalf("retry answered with lease %s (replayed %v), ended as %q: a dead lease as a success", r.ID, replayed, r.EndReason)
	}
}
