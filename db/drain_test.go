package db

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func drainPatch(on bool) DevicePatch { return DevicePatch{Drain: &on} }

// A drained leased device keeps its holder and goes to maintenance, not
// idle, when the lease ends, by release or by expiry; nobody waiting gets
// it. Undrain puts it back.
func TestDrainTakesALeasedDeviceOutWhenItsLeaseEnds(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	for _, end := range []string{"release", "expiry"} {
		ttl := time.Minute
		if end == "expiry" {
			ttl = 50 * time.Millisecond
		}
		lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, TTL: ttl})
		d, err := a.UpdateDevice(t.Context(), "d1", drainPatch(true))
		if err != nil || d.State != StateLeased || !d.Drain {
			t.Fatalf("%s: drain of the leased device: %+v, %v", end, d, err)
		}
		waiting := make(chan error, 1)
		go func() {
			_, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 500 * time.Millisecond, Owner: "w"})
			waiting <- err
		}()
		awaitJoin(t, a, "w")
		if end == "release" {
			if _, err := a.Release(t.Context(), lease.ID); err != nil {
				t.Fatal(err)
			}
		} else {
			time.Sleep(100 * time.Millisecond)
			if n := a.reaper.pass(t.Context()); n != 1 {
				t.Fatalf("reaped %d", n)
			}
		}
		if err := <-waiting; !errors.Is(err, ErrNoDevice) {
			t.Fatalf("%s: the waiter got %v, want no device (the drained one is not for it)", end, err)
		}
		d = mustDevice(t, a, "d1")
		if d.State != StateMaintenance || d.Drain || d.LeaseID != nil || d.StateReason == "" {
			t.Fatalf("%s: device after its lease ended: %+v", end, d)
		}
		if d, err = a.UpdateDevice(t.Context(), "d1", drainPatch(false)); err != nil || d.State != StateIdle {
			t.Fatalf("%s: undrain: %+v, %v", end, d, err)
		}
	}
}

// Drain of a device that is not leased is maintenance at once; undrain of a
// leased drained device cancels the drain.
func TestDrainOfAnIdleDeviceAndUndrainOfALeasedOne(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	d, err := a.UpdateDevice(t.Context(), "d1", DevicePatch{Drain: ptr(true), Reason: "new cable"})
	if err != nil || d.State != StateMaintenance || d.StateReason != "new cable" || d.Drain {
		t.Fatalf("drain of an idle device: %+v, %v", d, err)
	}
	if d, err = a.UpdateDevice(t.Context(), "d1", drainPatch(false)); err != nil || d.State != StateIdle {
		t.Fatalf("undrain: %+v, %v", d, err)
	}
	lease := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
	if _, err := a.UpdateDevice(t.Context(), "d1", drainPatch(true)); err != nil {
		t.Fatal(err)
	}
	if d, err = a.UpdateDevice(t.Context(), "d1", drainPatch(false)); err != nil || d.Drain || d.State != StateLeased {
		t.Fatalf("undrain of a leased drained device: %+v, %v", d, err)
	}
	if _, err := a.Release(t.Context(), lease.ID); err != nil {
		t.Fatal(err)
	}
	if d := mustDevice(t, a, "d1"); d.State != StateIdle {
		t.Fatalf("after the release: %+v", d)
	}
}

// A drain that an admin commits while a release (or an expiry) is handing
// the device to the next waiter survives: the waiter gets the device, and
// the drain applies when that lease ends. The interleaving is made
// deterministic by a DBA's session holding the device row while the
// release statement runs (its snapshot, without the drain, already taken),
// then setting the drain and committing.
func TestDrainSetDuringAHandoverSurvives(t *testing.T) {
	for _, end := range []string{"release", "expiry"} {
		t.Run(end, func(t *testing.T) {
			url := newDB(t)
			a := newAllocator(t, url, testConfig(&fakeProber{}))
			mustCreate(t, a, "d1", "lab", "h:1", nil)
			ttl := time.Minute
			if end == "expiry" {
				ttl = 50 * time.Millisecond
			}
			held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}, TTL: ttl})
			waiting := goAcquire(t.Context(), a, AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 30 * time.Second, Owner: "w"})
			awaitJoin(t, a, "w")
			if end == "expiry" {
				waitFor(t, "the lease to lapse", func() bool {
					var due bool
					err := a.pool.QueryRow(t.Context(), `SELECT expires_at <= now() FROM devalloc.leases WHERE id = $1`, held.ID).Scan(&due)
					return err == nil && due
				})
			}

			dba := dbaRowLock(t, url, "d1")
			ended := make(chan error, 1)
			go func() {
				if end == "release" {
					_, err := a.Release(t.Context(), held.ID)
					ended <- err
					return
				}
				if n := a.reaper.pass(t.Context()); n != 1 {
					ended <- fmt.Errorf("reaped %d", n)
					return
				}
				ended <- nil
			}()
			waitFor(t, "the release to wait for the device row", func() bool {
				var n int
				err := a.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
					WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '-- name: EndLease %'`).Scan(&n)
				return err == nil && n == 1
			})
			if _, err := dba.Exec(t.Context(), `UPDATE devalloc.devices SET drain = true, updated_at = now() WHERE name = 'd1'`); err != nil {
				t.Fatal(err)
			}
			if err := dba.Commit(t.Context()); err != nil {
				t.Fatal(err)
			}
			if err := <-ended; err != nil {
				t.Fatal(err)
			}
			r := <-waiting
			if r.err != nil {
				t.Fatalf("waiter: %v", r.err)
			}
			d := mustDevice(t, a, "d1")
			if d.State != StateLeased || !d.Drain {
				t.Fatalf("device handed over with a drain committed meanwhile: %+v, want leased and still draining", d)
			}
			if _, err := a.Release(t.Context(), r.lease.ID); err != nil {
				t.Fatal(err)
			}
			if d := mustDevice(t, a, "d1"); d.State != StateMaintenance || d.Drain {
				t.Fatalf("after the new holder's release: %+v, want maintenance", d)
			}
		})
	}
}

// A drain kept across a handover (above) may meet a device that then fails
// its probe and goes offline still draining: when it answers again it goes
// to maintenance, as drained, not back to idle for the line.
func TestDrainedOfflineDeviceRecoversIntoMaintenance(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "d1", "lab", "h:1", nil)
	if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.devices SET state = 'offline', drain = true, next_probe_at = now() WHERE name = 'd1'`); err != nil {
		t.Fatal(err)
	}
	if n := a.health.pass(t.Context()); n != 1 {
		t.Fatalf("health pass recovered %d devices, want 1", n)
	}
	if d := mustDevice(t, a, "d1"); d.State != StateMaintenance || d.Drain || d.StateReason == "" {
		t.Fatalf("drained device after it answered again: %+v, want maintenance", d)
	}
}

// dbaRowLock is a DBA's transaction, on its own connection, holding the
// named device's row lock until it ends (rolled back when the test ends at
// the latest).
func dbaRowLock(t *testing.T, url, name string) pgx.Tx {
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
	if _, err := tx.Exec(t.Context(), `SELECT 1 FROM devalloc.devices WHERE name = $1 FOR UPDATE`, name); err != nil {
		t.Fatal(err)
	}
	return tx
}
