package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/httpapi/apitest"
	"github.com/devalloc/devalloc/httpapi/client"
)

// cliServer is an API server on a fresh database, an admin SDK client to
// arrange and inspect it, and keys for the CLI.
type cliServer struct {
	url      string
	adminKey string
	ciKey    string // a client key named "ci"
	admin    *client.ClientWithResponses
}

func newCLIServer(t *testing.T) *cliServer {
	t.Helper()
	return newCLIServerWrapped(t, nil)
}

// newCLIServerWrapped puts wrap (if not nil) in front of the API.
func newCLIServerWrapped(t *testing.T, wrap func(http.Handler) http.Handler) *cliServer {
	t.Helper()
	srv := apitest.Start(t, apitest.Options{Wrap: wrap})
	s := &cliServer{url: srv.URL, adminKey: srv.Key(t, "admin", db.RoleAdmin), ciKey: srv.Key(t, "ci", db.RoleClient)}
	var err error
	if s.admin, err = client.NewClientWithResponses(srv.URL, client.WithBearerToken(s.adminKey)); err != nil {
		t.Fatal(err)
	}
	return s
}

// device registers a device (probe none) through the API.
func (s *cliServer) device(t *testing.T, name, pool string, labels map[string]string) {
	t.Helper()
	req := client.CreateDeviceRequest{Name: name, Pool: &pool, Address: "10.0.0.1:5555", Probe: ptr(client.CreateDeviceRequestProbeNone)}
	if labels != nil {
		req.Labels = &labels
	}
	r, err := s.admin.CreateDeviceWithResponse(t.Context(), req)
	if err != nil || r.StatusCode() != http.StatusCreated {
		t.Fatalf("create device %s: %v %s", name, err, r.Body)
	}
}

// hold leases a device of pool with the admin key, for the CLI to wait on.
func (s *cliServer) hold(t *testing.T, pool string) client.Lease {
	t.Helper()
	r, err := s.admin.AcquireLeaseWithResponse(t.Context(), nil, client.AcquireLeaseRequest{Pool: &pool})
	if err != nil || r.JSON201 == nil {
		t.Fatalf("acquire in %s: %v %s", pool, err, r.Body)
	}
	return *r.JSON201
}

func (s *cliServer) lease(t *testing.T, id uuid.UUID) client.Lease {
	t.Helper()
	r, err := s.admin.GetLeaseWithResponse(t.Context(), id)
	if err != nil || r.JSON200 == nil {
		t.Fatalf("get lease %s: %v %s", id, err, r.Body)
	}
	return *r.JSON200
}

func (s *cliServer) release(t *testing.T, id uuid.UUID) {
	t.Helper()
	r, err := s.admin.ReleaseLeaseWithResponse(t.Context(), id)
	if err != nil || r.StatusCode() != http.StatusNoContent {
		t.Fatalf("release %s: %v %s", id, err, r.Body)
	}
}

func (s *cliServer) waiting(t *testing.T, pool string) int64 {
	t.Helper()
	r, err := s.admin.ListPoolsWithResponse(t.Context())
	if err != nil || r.JSON200 == nil {
		t.Fatalf("pools: %v", err)
	}
	for _, p := range r.JSON200.Pools {
		if p.Name == pool {
			return p.Waiting
		}
	}
	return 0
}

// cliResult is one finished CLI run.
type cliResult struct {
	code           int
	stdout, stderr string
}

// cli runs "devalloc cmd --url ... --key key args..." in-process.
func (s *cliServer) cli(t *testing.T, key, cmd string, args ...string) cliResult {
	t.Helper()
	full := append([]string{cmd, "--url", s.url, "--key", key}, args...)
	return runCLI(t, full...)
}

func runCLI(t *testing.T, args ...string) cliResult {
	t.Helper()
	code, stdout, stderr := runCmd(t, args...)
	return cliResult{code: code, stdout: stdout, stderr: stderr}
}

func wantCode(t *testing.T, r cliResult, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
}

// cells splits a table row on its column gaps.
func cells(line string) []string {
	return regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(line), -1)
}

// rowOf returns the table row whose first cell is first, split in cells.
func rowOf(t *testing.T, table, first string) []string {
	t.Helper()
	for line := range strings.SplitSeq(table, "\n") {
		if c := cells(line); c[0] == first {
			return c
		}
	}
	t.Fatalf("no row %q in:\n%s", first, table)
	return nil
}

func TestCLIListsAndLeases(t *testing.T) {
	s := newCLIServer(t)
	s.device(t, "pixel-1", "android", map[string]string{"model": "pixel-7", "os": "14"})
	s.device(t, "pixel-2", "android", map[string]string{"model": "pixel-8"})
	s.device(t, "board-1", "boards", nil)

	r := s.cli(t, s.ciKey, "devices", "--pool", "android")
	wantCode(t, r, 0)
	if got := cells(strings.SplitN(r.stdout, "\n", 2)[0]); strings.Join(got, " ") != "NAME POOL STATE PROBE ADDRESS LABELS REASON" {
		t.Errorf("devices header %q", got)
	}
	if got := rowOf(t, r.stdout, "pixel-1"); strings.Join(got, " ") != "pixel-1 android idle none 10.0.0.1:5555 model=pixel-7,os=14 -" {
		t.Errorf("devices row %q", got)
	}
	if strings.Contains(r.stdout, "board-1") {
		t.Errorf("--pool android lists board-1:\n%s", r.stdout)
	}

	r = s.cli(t, s.ciKey, "pools", "--json")
	wantCode(t, r, 0)
	var pools client.PoolList
	if err := json.Unmarshal([]byte(r.stdout), &pools); err != nil || len(pools.Pools) != 2 {
		t.Fatalf("pools --json: %v %s", err, r.stdout)
	}

	// Acquire by label, printed as a card.
	r = s.cli(t, s.ciKey, "acquire", "--pool", "android", "--label", "model=pixel-7", "--ttl", "1m", "--holder", "job 1")
	wantCode(t, r, 0)
	card := map[string]string{}
	for line := range strings.SplitSeq(strings.TrimSpace(r.stdout), "\n") {
		c := cells(line)
		card[c[0]] = strings.Join(c[1:], " ")
	}
	if card["device"] != "pixel-1" || card["owner"] != "ci" || card["holder"] != "job 1" || card["labels"] != "model=pixel-7,os=14" ||
		!strings.HasSuffix(card["expires"], "(active, 1m left)") {
		t.Errorf("acquire card: %q", card)
	}
	id := uuid.MustParse(card["lease"])

	// Flags may follow the lease id.
	r = s.cli(t, s.ciKey, "renew", id.String(), "--ttl", "2m", "--json")
	wantCode(t, r, 0)
	var renewed client.Lease
	if err := json.Unmarshal([]byte(r.stdout), &renewed); err != nil || renewed.ID != id {
		t.Fatalf("renew --json: %v %s", err, r.stdout)
	}
	if left := time.Until(renewed.ExpiresAt); left < time.Minute+50*time.Second {
		t.Errorf("renewed for 2m, %s left", left)
	}

	r = s.cli(t, s.ciKey, "leases", "--active")
	wantCode(t, r, 0)
	row := rowOf(t, r.stdout, id.String())
	if row[1] != "pixel-1" || row[3] != "ci" || row[4] != "job 1" || !strings.HasPrefix(row[6], "active, ") {
		t.Errorf("leases row %q", row)
	}

	r = s.cli(t, s.ciKey, "release", id.String())
	wantCode(t, r, 0)
	if r.stdout != "released lease "+id.String()+"\n" {
		t.Errorf("release printed %q", r.stdout)
	}
	if s.lease(t, id).EndReason == nil {
		t.Fatal("lease still active after release")
	}

	// The server's problem, as one line.
	r = s.cli(t, s.ciKey, "renew", id.String())
	wantCode(t, r, 1)
	if want := "devalloc: 410 lease " + id.String() + " has ended (released)\n"; r.stderr != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}

	r = s.cli(t, s.ciKey, "leases", "--json")
	wantCode(t, r, 0)
	var leases client.LeaseList
	if err := json.Unmarshal([]byte(r.stdout), &leases); err != nil || len(leases.Leases) != 1 || leases.Leases[0].EndReason == nil {
		t.Fatalf("leases --json: %v %s", err, r.stdout)
	}
}

func TestCLIErrors(t *testing.T) {
	s := newCLIServer(t)
	s.device(t, "only", "solo", map[string]string{"os": "14"})
	held := s.hold(t, "solo")

	tests := []struct {
		name   string
		key    string
		args   []string
		code   int
		stderr string // a prefix
	}{
		{"unsatisfiable", s.ciKey, []string{"acquire", "--pool", "solo", "--label", "os=15", "--wait", "1m"}, 1,
			`devalloc: 422 no registered device matches pool "solo" with labels {"os":"15"}`},
		{"bad label", s.ciKey, []string{"acquire", "--pool", "solo", "--label", "bad key=1"}, 1,
			"devalloc: 422 validation failed: body.labels.bad key: label key must be"},
		{"nothing free", s.ciKey, []string{"acquire", "--pool", "solo"}, 1,
			`devalloc: 503 no matching device became available for pool "solo"; retry later`},
		{"no key", "", []string{"pools"}, 1, "devalloc: 401 missing API key"},
		{"unknown key", "dva_nope", []string{"leases"}, 1, "devalloc: 401 unknown or revoked API key"},
		{"not your lease", s.ciKey, []string{"release", held.ID.String()}, 1, "devalloc: 403 this lease belongs to another key"},
		{"unknown lease", s.ciKey, []string{"renew", uuid.NewString()}, 1, "devalloc: 404 lease "},
		{"not a lease id", s.ciKey, []string{"release", "42"}, 2, `devalloc: "42" is not a lease id`},
		{"no lease id", s.ciKey, []string{"renew"}, 2, "devalloc: want one lease id"},
		{"bad state", s.ciKey, []string{"devices", "--state", "broken"}, 2, `devalloc: --state "broken": want idle`},
		{"bad label flag", s.ciKey, []string{"acquire", "--label", "nolabel"}, 2, `invalid value "nolabel" for flag -label`},
		{"stray argument", s.ciKey, []string{"pools", "now"}, 2, `devalloc: unexpected argument "now"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := s.cli(t, tt.key, tt.args[0], tt.args[1:]...)
			wantCode(t, r, tt.code)
			if !strings.HasPrefix(r.stderr, tt.stderr) && !strings.Contains(r.stderr, tt.stderr) {
				t.Errorf("stderr %q, want it to start with %q", r.stderr, tt.stderr)
			}
			if tt.code == 1 && strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("want one line on stderr, got %q", r.stderr)
			}
		})
	}

	t.Run("wait runs out", func(t *testing.T) {
		r := s.cli(t, s.ciKey, "acquire", "--pool", "solo", "--wait", "2s")
		wantCode(t, r, 1)
		want := "devalloc: waiting up to 2s for a device in pool solo...\n" +
			`devalloc: 503 no matching device became available for pool "solo"; retry later` + "\n"
		if r.stderr != want {
			t.Errorf("stderr %q, want %q", r.stderr, want)
		}
	})

	t.Run("no server", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		r := runCLI(t, "pools", "--url", "http://"+addr)
		wantCode(t, r, 1)
		want := "devalloc: cannot reach devalloc at http://" + addr + " (connection refused). " +
			`Start "devalloc serve" there, or set DEVALLOC_URL (--url).` + "\n"
		if r.stderr != want {
			t.Errorf("stderr %q, want %q", r.stderr, want)
		}
	})

	t.Run("bad url", func(t *testing.T) {
		r := runCLI(t, "leases", "--url", "127.0.0.1:8080")
		wantCode(t, r, 2)
	})
}

func TestCLIEnvTwins(t *testing.T) {
	s := newCLIServer(t)
	s.device(t, "d1", "lab", map[string]string{"os": "14", "kind": "phone"})
	t.Setenv("DEVALLOC_URL", s.url)
	t.Setenv("DEVALLOC_KEY", s.ciKey)
	t.Setenv("DEVALLOC_POOL", "lab")
	t.Setenv("DEVALLOC_LABELS", "os=14, kind=phone")
	t.Setenv("DEVALLOC_JSON", "true")
	t.Setenv("DEVALLOC_HOLDER", "from-env")

	r := runCLI(t, "acquire")
	wantCode(t, r, 0)
	var l client.Lease
	if err := json.Unmarshal([]byte(r.stdout), &l); err != nil {
		t.Fatalf("acquire with DEVALLOC_JSON: %v %s", err, r.stdout)
	}
	if l.Device.Name != "d1" || l.Holder != "from-env" || l.Owner != "ci" {
		t.Errorf("lease %+v", l)
	}

	// A --label on the command line replaces DEVALLOC_LABELS.
	r = runCLI(t, "acquire", "--label", "kind=tablet")
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, `with labels {"kind":"tablet"}`) {
		t.Errorf("stderr %q", r.stderr)
	}

	// -h must not print the key from the environment.
	r = runCLI(t, "acquire", "-h")
	wantCode(t, r, 0)
	if strings.Contains(r.stderr, s.ciKey) {
		t.Error("acquire -h prints DEVALLOC_KEY")
	}
}

func TestCLIAcquireWaitsForARelease(t *testing.T) {
	s := newCLIServer(t)
	s.device(t, "only", "solo", nil)
	held := s.hold(t, "solo")

	done := make(chan cliResult, 1)
	go func() { done <- s.cli(t, s.ciKey, "acquire", "--pool", "solo", "--wait", "30s", "--json") }()
	deadline := time.Now().Add(10 * time.Second)
	for s.waiting(t, "solo") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the CLI's acquire never waited on the server")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(progressDelay + 200*time.Millisecond) // long enough to say it waits
	s.release(t, held.ID)

	var r cliResult
	select {
	case r = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("the waiting acquire was not woken by the release")
	}
	wantCode(t, r, 0)
	var l client.Lease
	if err := json.Unmarshal([]byte(r.stdout), &l); err != nil || l.Device.Name != "only" || l.FencingToken != held.FencingToken+1 {
		t.Fatalf("woken acquire: %v %s", err, r.stdout)
	}
	if r.stderr != "devalloc: waiting up to 30s for a device in pool solo...\n" {
		t.Errorf("stderr %q", r.stderr)
	}
}

func TestHuman(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 1400 * time.Millisecond: "1s", 59 * time.Second: "59s", 10 * time.Minute: "10m",
		9*time.Minute + 50*time.Second: "9m50s", time.Hour + 5*time.Minute + 20*time.Second: "1h5m", 2 * time.Hour: "2h",
		-time.Second: "0s",
	} {
		if got := human(d); got != want {
			t.Errorf("human(%s) = %q, want %q", d, got, want)
		}
	}
}

// TestCLIAcquireAsksAgainWhenTheAnswerIsLost breaks the connection of the
// first acquires after the server granted the lease: the CLI asks again with
// the same Idempotency-Key and gets that lease, not a second device. (Go's
// transport itself resends a request with an Idempotency-Key once when a
// reused connection breaks; dropping two answers gets past that.)
func TestCLIAcquireAsksAgainWhenTheAnswerIsLost(t *testing.T) {
	var dropped atomic.Int32
	s := newCLIServerWrapped(t, func(api http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost || r.URL.Path != "/v1/leases" || dropped.Add(1) > 2 {
				api.ServeHTTP(w, r)
				return
			}
			api.ServeHTTP(httptest.NewRecorder(), r) // the lease is granted...
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			conn.Close() // ...and the answer lost
		})
	})
	s.device(t, "d1", "lab", nil)
	s.device(t, "d2", "lab", nil)

	r := s.cli(t, s.ciKey, "acquire", "--pool", "lab", "--json")
	wantCode(t, r, 0)
	if !strings.HasPrefix(r.stderr, "devalloc: acquire got no answer (") || !strings.HasSuffix(r.stderr, "); asking again\n") {
		t.Errorf("stderr %q", r.stderr)
	}
	var l client.Lease
	if err := json.Unmarshal([]byte(r.stdout), &l); err != nil {
		t.Fatalf("%v: %s", err, r.stdout)
	}
	r = s.cli(t, s.adminKey, "leases", "--active", "--json")
	wantCode(t, r, 0)
	var leases client.LeaseList
	if err := json.Unmarshal([]byte(r.stdout), &leases); err != nil {
		t.Fatal(err)
	}
	if len(leases.Leases) != 1 || leases.Leases[0].ID != l.ID {
		t.Fatalf("active leases after a retried acquire: %s (the CLI got %s)", r.stdout, l.ID)
	}
}

func TestCLIListsFollowPages(t *testing.T) {
	s := newCLIServer(t)
	for i := range 5 {
		s.device(t, "d"+strconv.Itoa(i), "lab", nil)
	}
	for range 5 {
		s.hold(t, "lab")
	}
	r := s.cli(t, s.ciKey, "devices", "--json")
	wantCode(t, r, 0)
	var devs client.DeviceList
	if err := json.Unmarshal([]byte(r.stdout), &devs); err != nil || len(devs.Devices) != 5 {
		t.Fatalf("devices: %v %s", err, r.stdout)
	}
	r = s.cli(t, s.adminKey, "leases", "--limit", "3")
	wantCode(t, r, 0)
	if n := strings.Count(r.stdout, "\n"); n != 4 {
		t.Errorf("--limit 3 printed %d lines:\n%s", n, r.stdout)
	}
	if r.stderr != "devalloc: showing the newest 3 leases; --limit 0 shows all\n" {
		t.Errorf("stderr %q", r.stderr)
	}
	r = s.cli(t, s.adminKey, "leases", "--limit", "0")
	wantCode(t, r, 0)
	if n := strings.Count(r.stdout, "\n"); n != 6 || r.stderr != "" {
		t.Errorf("--limit 0 printed %d lines, stderr %q", n, r.stderr)
	}
}
