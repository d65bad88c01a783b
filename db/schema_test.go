package db

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The invariants hold in the database itself, whatever SQL a DBA (or a bug)
// runs: each statement below must be refused.
func TestSchemaRefusesBrokenInvariants(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "idle-one", "lab", "h:1", nil)
	mustCreate(t, a, "held-one", "lab", "h:2", nil)
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab", Labels: nil}})
	other := "idle-one"
	if held.Device.Name == other {
		other = "held-one"
	}

	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	cases := map[string]string{
		"leased without a lease":          `UPDATE devalloc.devices SET state = 'leased' WHERE name = '` + other + `'`,
		"lease pointer on an idle device": `UPDATE devalloc.devices SET lease_id = '` + held.ID.String() + `' WHERE name = '` + other + `'`,
		"active lease the device does not point at": `INSERT INTO devalloc.leases (device_id, device_name, pool, owner, fencing_token, expires_at)
			SELECT id, name, pool, 'dba', 99, now() + interval '1 hour' FROM devalloc.devices WHERE name = '` + other + `'`,
		"second active lease on a device": `INSERT INTO devalloc.leases (device_id, device_name, pool, owner, fencing_token, expires_at)
			SELECT id, name, pool, 'dba', 99, now() + interval '1 hour' FROM devalloc.devices WHERE name = '` + held.Device.Name + `'`,
		"lease ended while its device stays leased": `UPDATE devalloc.leases SET released_at = now(), end_reason = 'released' WHERE id = '` + held.ID.String() + `'`,
		"device freed while its lease stays active": `UPDATE devalloc.devices SET state = 'idle', lease_id = NULL WHERE name = '` + held.Device.Name + `'`,
		"deleting a leased device":                  `DELETE FROM devalloc.devices WHERE name = '` + held.Device.Name + `'`,
		"labels that are not strings":               `UPDATE devalloc.devices SET labels = '{"n": 1}' WHERE name = '` + other + `'`,
		"lowering a fencing token":                  `UPDATE devalloc.devices SET fencing_token = 0 WHERE name = '` + held.Device.Name + `'`,
		"unknown state":                             `UPDATE devalloc.devices SET state = 'broken' WHERE name = '` + other + `'`,
	}
	for name, stmt := range cases {
		t.Run(name, func(t *testing.T) {
			// Deferred constraints fire at commit, so run each in its own transaction.
			err := pgx.BeginFunc(t.Context(), conn, func(tx pgx.Tx) error {
				_, err := tx.Exec(t.Context(), stmt)
				return err
			})
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code[:2] != "23" {
				t.Fatalf("want an integrity-constraint violation, got %v", err)
			}
		})
	}
	if d := mustDevice(t, a, held.Device.Name); d.State != StateLeased || *d.LeaseID != held.ID {
		t.Fatalf("device changed: %+v", d)
	}
}
