package db

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/probe"
)

// ledger is the clients' own record of who holds what. Every grant is checked
// against the device's previous lease: that lease must have been released
// by its holder first, or have expired (by the database clock) before the
// new one began. Fencing tokens must strictly increase per device.
type ledger struct {
	mu         sync.Mutex
	last       map[string]*ledgerEntry
	violations []string
	granted    map[uuid.UUID]bool
}

type ledgerEntry struct {
	lease    Lease
	released bool // its holder let go (or is about to) before anyone else could get it
}

func (l *ledger) granted1(lease Lease) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.granted[lease.ID] = true
	name := lease.Device.Name
	if prev := l.last[name]; prev != nil {
		switch {
		case !prev.released && lease.AcquiredAt.Before(prev.lease.ExpiresAt):
			l.violations = append(l.violations, fmt.Sprintf(
				"%s: lease %s granted at %v while lease %s held it until %v",
				name, lease.ID, lease.AcquiredAt, prev.lease.ID, prev.lease.ExpiresAt))
		case lease.FencingToken <= prev.lease.FencingToken:
			l.violations = append(l.violations, fmt.Sprintf(
				"%s: fencing token went from %d to %d", name, prev.lease.FencingToken, lease.FencingToken))
		}
	}
	l.last[name] = &ledgerEntry{lease: lease}
}

// letGo is called before the holder asks to release, so a grant racing
// with the release is never taken for a double holder.
func (l *ledger) letGo(lease Lease) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.last[lease.Device.Name]; e != nil && e.lease.ID == lease.ID {
		e.released = true
	}
}

func (l *ledger) renewed(lease Lease) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.last[lease.Device.Name]; e != nil && e.lease.ID == lease.ID {
		e.lease.ExpiresAt = lease.ExpiresAt
	}
}

// loopbackDevices starts n TCP listeners that accept and close, so the real
// tcp probe runs under the row lock.
func loopbackDevices(t testing.TB, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs
}

// Three allocator instances (own pools, hubs and listeners) share ten
// devices among 150 clients that acquire with waits, hold, renew, release,
// abandon leases to the reaper, and give up mid-wait. The ledger proves no
// device ever had two holders; the database is checked to agree at the end.
func TestConcurrentInstancesNeverDoubleAllocate(t *testing.T) {
	const instances, clientsPer, devices = 3, 50, 10
	duration := 10 * time.Second
	if d, err := time.ParseDuration(os.Getenv("DEVALLOC_CONCURRENCY_DURATION")); err == nil {
		duration = d
	}
	url := newDB(t)
	var allocs []*Allocator
	for range instances {
		cfg := testConfig(&probe.Network{})
		cfg.ReapInterval = 100 * time.Millisecond
		cfg.RecheckInterval = time.Second
		allocs = append(allocs, newAllocator(t, url, cfg))
	}
	// Half the devices need no probe: acquires take both paths (the one
	// statement and the probing transaction) in the same pool.
	for i, addr := range loopbackDevices(t, devices) {
		kind := []string{"tcp", "none"}[i%2]
		mustCreateProbed(t, allocs[0], fmt.Sprintf("dev-%02d", i), "farm", addr, kind, Labels{"kind": "board"})
	}

	led := &ledger{last: map[string]*ledgerEntry{}, granted: map[uuid.UUID]bool{}}
	var timeouts, gaveUp, abandoned, renews, lostBeforeRelease atomic.Int64
	var failures sync.Map
	end := time.Now().Add(duration)
	var wg sync.WaitGroup
	for i := range instances * clientsPer {
		a := allocs[i%instances]
		owner := fmt.Sprintf("client-%03d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 42))
			for time.Now().Before(end) {
				abandon := rng.IntN(30) == 0
				ttl := 5 * time.Second
				if abandon {
					ttl = 300 * time.Millisecond
				}
				ctx, cancel := context.WithCancel(t.Context())
				if rng.IntN(40) == 0 {
					time.AfterFunc(time.Duration(rng.IntN(20))*time.Millisecond, cancel)
				}
				lease, err := a.Acquire(ctx, AcquireRequest{
					Selector: Selector{Pool: "farm", Labels: Labels{"kind": "board"}},
					Wait:     2 * time.Second, TTL: ttl, Owner: owner,
				})
				cancel()
				switch {
				case errors.Is(err, ErrNoDevice):
					timeouts.Add(1)
					continue
				case errors.Is(err, context.Canceled):
					gaveUp.Add(1)
					continue
				case err != nil:
					failures.Store(owner, err)
					return
				}
				led.granted1(lease)
				time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
				if abandon {
					abandoned.Add(1)
					continue // the reaper takes it back
				}
				if rng.IntN(10) == 0 {
					renewed, err := a.Renew(t.Context(), lease.ID, 5*time.Second)
					if err != nil {
						failures.Store(owner, fmt.Errorf("renew: %w", err))
						return
					}
					led.renewed(renewed)
					renews.Add(1)
				}
				led.letGo(lease)
				if _, err := a.Release(t.Context(), lease.ID); err != nil {
					if endReason(err) == EndExpired {
						lostBeforeRelease.Add(1) // held past its TTL under load; reaped
						continue
					}
					failures.Store(owner, fmt.Errorf("release: %w", err))
					return
				}
			}
		}()
	}
	wg.Wait()
	failures.Range(func(k, v any) bool {
		t.Errorf("%v: %v", k, v)
		return true
	})
	for _, v := range led.violations {
		t.Error(v)
	}
	t.Logf("%v: %d grants, %d wait timeouts, %d gave up mid-wait, %d abandoned to the reaper, %d renewals, %d lapsed before release",
		duration, len(led.granted), timeouts.Load(), gaveUp.Load(), abandoned.Load(), renews.Load(), lostBeforeRelease.Load())
	if len(led.granted) < devices*10 {
		t.Errorf("only %d grants in %v: the farm barely moved", len(led.granted), duration)
	}

	// Let abandoned leases expire and be reaped, then account for every device.
	time.Sleep(400 * time.Millisecond)
	allocs[0].reaper.pass(t.Context())
	// A request whose row could not leave the line in time (a loaded
	// database) was answered "no device" and its row stranded; a device
	// handed to that row meanwhile is a lease no client saw, given back by
	// the re-check. Each mark allows one, as each client that gave up does.
	stranded := 0
	for _, a := range allocs {
		a.stranded.mu.Lock()
		stranded += int(a.stranded.made)
		a.stranded.mu.Unlock()
	}
	t.Logf("%d rows stranded (their leave failed)", stranded)
	checkDatabaseAgrees(t, url, led.granted, int(gaveUp.Load())+stranded, devices)
}

// checkDatabaseAgrees checks the database's own history: per device, no two
// leases overlap in time; every lease is one a client was granted, or one
// granted to a client that gave up at that very moment (ended at once by the
// allocator); and every device is idle with no active lease. unseenAllowed
// counts the requests whose grant may have gone to nobody (clients that
// gave up, rows stranded by a failed leave).
func checkDatabaseAgrees(t *testing.T, url string, granted map[uuid.UUID]bool, unseenAllowed, devices int) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var overlaps, active, idle, all int
	err = conn.QueryRow(t.Context(), `
		SELECT count(*) FROM (
			SELECT acquired_at, lag(coalesce(released_at, 'infinity')) OVER w AS prev_end
			FROM devalloc.leases WINDOW w AS (PARTITION BY device_id ORDER BY acquired_at, fencing_token)
		) s WHERE prev_end > acquired_at`).Scan(&overlaps)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(t.Context(), `SELECT id, released_at IS NULL FROM devalloc.leases`)
	if err != nil {
		t.Fatal(err)
	}
	unseen := 0
	seen := map[uuid.UUID]bool{}
	for rows.Next() {
		var id uuid.UUID
		var isActive bool
		if err := rows.Scan(&id, &isActive); err != nil {
			t.Fatal(err)
		}
		seen[id] = true
		if isActive {
			active++
		}
		if !granted[id] {
			unseen++
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FILTER (WHERE state = 'idle' AND lease_id IS NULL), count(*) FROM devalloc.devices`).Scan(&idle, &all); err != nil {
		t.Fatal(err)
	}
	if overlaps != 0 {
		t.Errorf("%d leases overlap the previous lease of their device", overlaps)
	}
	for id := range granted {
		if !seen[id] {
			t.Errorf("lease %s granted to a client is not in the database", id)
		}
	}
	if unseen > unseenAllowed {
		t.Errorf("%d leases no client saw, but only %d requests gave up or were stranded", unseen, unseenAllowed)
	}
	if active != 0 || idle != devices || all != devices {
		t.Errorf("at the end: %d active leases, %d of %d devices idle (want 0, %d of %d)", active, idle, all, devices, devices)
	}
}
