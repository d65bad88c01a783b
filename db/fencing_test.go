package db

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// isIntegrityViolation reports whether err is an SQLSTATE class 23 error.
func isIntegrityViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code[:2] == "23"
}

// Fencing tokens only grow for a device name: a device deleted and
// registered again under the same name starts from where the old one
// stopped, so its next lease's token is larger than any earlier lease's.
func TestReRegisteredDeviceKeepsFencingTokensGrowing(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "x", "lab", "h:1", nil)
	var last int64
	for range 2 {
		l := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})
		last = l.FencingToken
		if _, err := a.Release(t.Context(), l.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.DeleteDevice(t.Context(), "x", false); err != nil {
		t.Fatal(err)
	}
	again := mustCreate(t, a, "x", "lab", "h:1", nil)
	if again.FencingToken < last {
		t.Fatalf("re-registered x starts at fencing token %d, below its last lease's %d", again.FencingToken, last)
	}
	if l := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}}); l.FencingToken <= last {
		t.Fatalf("lease of the re-registered x has fencing token %d, not above the earlier %d", l.FencingToken, last)
	}
	// The floor the name keeps can no more go down than the token.
	if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.fencing_floor SET token = 0 WHERE name = 'x'`); !isIntegrityViolation(err) {
		t.Fatalf("lowering the fencing floor of x: %v, want an integrity-constraint violation", err)
	}
}

// An offline device with no next probe time (a DBA's UPDATE, an admin's
// state change) is due for a probe, not forgotten.
func TestOfflineDeviceWithoutNextProbeIsProbed(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	mustCreate(t, a, "x", "lab", "h:1", nil)
	if _, err := a.pool.Exec(t.Context(), `UPDATE devalloc.devices SET state = 'offline', next_probe_at = NULL WHERE name = 'x'`); err != nil {
		t.Fatal(err)
	}
	if n := a.health.pass(t.Context()); n != 1 {
		t.Fatalf("health pass recovered %d devices, want the offline one with next_probe_at NULL", n)
	}
	if d := mustDevice(t, a, "x"); d.State != StateIdle {
		t.Fatalf("device after the health pass: %+v", d)
	}
}
