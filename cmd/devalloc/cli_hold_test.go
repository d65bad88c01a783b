package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
)

// leaseFromOutput finds the lease id a test command printed as "lease=ID".
func leaseFromOutput(t *testing.T, out string) uuid.UUID {
	t.Helper()
	for line := range strings.SplitSeq(out, "\n") {
		if v, ok := strings.CutPrefix(line, "lease="); ok {
			return uuid.MustParse(v)
		}
	}
	t.Fatalf("the command printed no lease id: %q", out)
	return uuid.UUID{}
}

// waitForFile waits until the command under test has written path.
func waitForFile(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if b, err := os.ReadFile(path); err == nil && strings.HasSuffix(string(b), "\n") {
			return strings.TrimSpace(string(b))
		}
		if time.Now().After(deadline) {
			t.Fatalf("the command never wrote %s", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCLIAcquireRunsCommandAndReleases(t *testing.T) {
	s := newCLIServer(t)
	s.device(t, "pixel-1", "android", map[string]string{"model": "pixel-7"})

	r := s.cli(t, s.ciKey, "acquire", "--pool", "android", "--",
		"sh", "-c", `echo "lease=$DEVALLOC_LEASE_ID"; echo "device=$DEVALLOC_DEVICE_NAME $DEVALLOC_DEVICE_POOL $DEVALLOC_DEVICE_ADDRESS $DEVALLOC_DEVICE_LABELS $DEVALLOC_FENCING_TOKEN"; exit 3`)
	wantCode(t, r, 3)
	if !strings.Contains(r.stdout, `device=pixel-1 android 10.0.0.1:5555 {"model":"pixel-7"} 1`+"\n") {
		t.Errorf("the command's environment: %q", r.stdout)
	}
	if r.stderr != "" {
		t.Errorf("stderr %q", r.stderr)
	}
	l := s.lease(t, leaseFromOutput(t, r.stdout))
	if l.EndReason == nil || *l.EndReason != "released" {
		t.Fatalf("after the command the lease is %+v, want released", l)
	}
}

func TestCLIAcquireRenewsWhileTheCommandRuns(t *testing.T) {
	s := newCLIServer(t)
	s.device(t, "pixel-1", "android", nil)

	// The command outlives the 2 s TTL twice over; renewals every ~667 ms
	// keep the lease (the test server reaps every 100 ms).
	start := time.Now()
	r := s.cli(t, s.ciKey, "acquire", "--pool", "android", "--ttl", "2s", "--",
		"sh", "-c", `echo "lease=$DEVALLOC_LEASE_ID"; sleep 4`)
	wantCode(t, r, 0)
	if time.Since(start) < 4*time.Second {
		t.Fatalf("returned after %s, before the command ended", time.Since(start))
	}
	if r.stderr != "" {
		t.Errorf("stderr %q", r.stderr)
	}
	l := s.lease(t, leaseFromOutput(t, r.stdout))
	if l.EndReason == nil || *l.EndReason != "released" {
		t.Fatalf("lease %+v, want released (not expired)", l)
	}
	if held := l.ReleasedAt.Sub(l.AcquiredAt); held < 4*time.Second {
		t.Errorf("lease held %s, want the command's 4s", held)
	}
}

func TestCLIAcquireStopsTheCommandWhenTheLeaseIsLost(t *testing.T) {
	s := newCLIServer(t)
	s.device(t, "pixel-1", "android", nil)
	ready := filepath.Join(t.TempDir(), "lease")

	done := make(chan cliResult, 1)
	go func() {
		// The command ignores SIGTERM, so it takes the SIGKILL after --grace.
		done <- s.cli(t, s.ciKey, "acquire", "--pool", "android", "--ttl", "2s", "--grace", "300ms", "--",
			"sh", "-c", `trap "" TERM; echo "$DEVALLOC_LEASE_ID" > `+ready+`; while :; do sleep 0.1; done`)
	}()
	id := uuid.MustParse(waitForFile(t, ready))
	s.release(t, id) // an admin ending another key's lease revokes it

	var r cliResult
	select {
	case r = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("acquire did not stop the command after the lease was revoked")
	}
	wantCode(t, r, exitLeaseLost)
	if !strings.Contains(r.stderr, "devalloc: LEASE LOST: 410 lease "+id.String()+" has ended (revoked). Device pixel-1 may be someone else's now") ||
		!strings.Contains(r.stderr, "killing it") {
		t.Errorf("stderr %q", r.stderr)
	}
}

func TestCLIAcquireForwardsSignalsAndReleases(t *testing.T) {
	s := newCLIServer(t)
	s.device(t, "pixel-1", "android", nil)
	ready := filepath.Join(t.TempDir(), "lease")

	done := make(chan cliResult, 1)
	go func() {
		done <- s.cli(t, s.ciKey, "acquire", "--pool", "android", "--",
			"sh", "-c", `trap "exit 7" TERM; echo "$DEVALLOC_LEASE_ID" > `+ready+`; while :; do sleep 0.1; done`)
	}()
	id := uuid.MustParse(waitForFile(t, ready))
	// devalloc has caught SIGTERM since before it acquired, so this reaches
	// its handler, which passes it on to the command.
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var r cliResult
	select {
	case r = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("the command did not end after SIGTERM")
	}
	wantCode(t, r, 7)
	if l := s.lease(t, id); l.EndReason == nil || *l.EndReason != "released" {
		t.Fatalf("lease %+v, want released", l)
	}
}

func TestCLIAcquireCommandNotFound(t *testing.T) {
	s := newCLIServer(t)
	s.device(t, "pixel-1", "android", nil)
	r := s.cli(t, s.ciKey, "acquire", "--pool", "android", "--", "./no-such-command")
	wantCode(t, r, exitNotFound)
	if !strings.HasPrefix(r.stderr, "devalloc: cannot run ./no-such-command: ") {
		t.Errorf("stderr %q", r.stderr)
	}
	// The device is free again.
	r = s.cli(t, s.ciKey, "acquire", "--pool", "android")
	wantCode(t, r, 0)
}
