package db

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// outsizedLabels are labels too big for a served notice (32 values of 250
// characters, within the API's limits): the waiter is told only that it
// was served and reads its leases itself.
func outsizedLabels() Labels {
	labels := Labels{}
	for i := range 32 {
		labels[fmt.Sprintf("k%02d", i)] = strings.Repeat("x", 250)
	}
	return labels
}

// A waiter is handed a device, but reading its leases fails (a DBA's lock
// on the leases outlasts the read's bound): the client gets an error, and
// the device must not stay leased to nobody until the lease's TTL. One
// re-check pass gives it back.
func TestFailedReadOfHandedLeasesGivesThemBack(t *testing.T) {
	url := newDB(t)
	a := newAllocator(t, url, testConfig(&fakeProber{}))
	mustCreate(t, a, "only", "lab", "h:1", outsizedLabels())
	held := mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "lab"}})

	acquired := make(chan error, 1)
	go func() {
		_, err := a.Acquire(t.Context(), AcquireRequest{Selector: Selector{Pool: "lab"}, Wait: 10 * time.Second, Owner: "w", TTL: time.Hour})
		acquired <- err
	}()
	waitFor(t, "the waiter to be in line", func() bool { return queueLength(t, a, "lab") == 1 })

	// Arrange for a DBA's exclusive lock on leases to be granted the moment
	// the release that hands the device over commits: the release waits
	// for a row lock, the DBA's LOCK TABLE queues behind the release.
	observer, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer observer.Close(context.Background())
	blocker, err := observer.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(context.Background()) //nolint:errcheck // no-op once committed
	if _, err := blocker.Exec(t.Context(), `SELECT 1 FROM devalloc.leases WHERE id = $1 FOR UPDATE`, held.ID); err != nil {
		t.Fatal(err)
	}
	released := make(chan error, 1)
	go func() {
		_, err := a.Release(t.Context(), held.ID)
		released <- err
	}()
	watcher, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close(context.Background())
	waitingOnLock(t, watcher, "name: EndLease")
	dba, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer dba.Close(context.Background())
	dbaTx, err := dba.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer dbaTx.Rollback(context.Background()) //nolint:errcheck // no-op once ended
	locked := make(chan error, 1)
	go func() {
		_, err := dbaTx.Exec(t.Context(), "LOCK TABLE devalloc.leases IN ACCESS EXCLUSIVE MODE")
		locked <- err
	}()
	waitingOnLock(t, watcher, "LOCK TABLE devalloc.leases")
	if err := blocker.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-released; err != nil {
		t.Fatalf("release: %v", err)
	}
	if err := <-locked; err != nil {
		t.Fatalf("DBA's lock: %v", err)
	}

	// The waiter was served, could not read what it was handed, and its
	// client hears an error.
	var got error
	select {
	case got = <-acquired:
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting acquire did not answer")
	}
	t.Logf("the waiting acquire answered: %v", got)
	if got == nil || !IsTransient(got) {
		t.Fatalf("acquire whose handed leases could not be read: %v, want a transient error", got)
	}
	if err := dbaTx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}

	// One re-check pass later nobody holds the device.
	a.rechecker.pass(t.Context())
	if dev := mustDevice(t, a, "only"); dev.State != StateIdle {
		lease := "none"
		if dev.LeaseID != nil {
			lease = dev.LeaseID.String()
		}
		t.Fatalf("device after the client was told an error and a re-check: state %s, lease %s; want idle", dev.State, lease)
	}
}
