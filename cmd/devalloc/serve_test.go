package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devalloc/devalloc/db/dbtest"
)

// syncBuffer is a bytes.Buffer safe to read while the server writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var curlLine = regexp.MustCompile(`curl -s -X POST (http://\S+)/v1/leases -H 'Authorization: Bearer (dva_[A-Za-z0-9_-]+)' -H 'Content-Type: application/json' -d '(\{[^']*\})'`)

// demoKey is the client key the running demo printed.
var demoKey string

// authGet and authDo send the demo key, as the printed curl does.
func authDo(t *testing.T, method, url, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+demoKey)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// startServe runs "devalloc serve" in-process on a free port and returns
// the base URL it printed, and a stop function that cancels it (as SIGINT
// would) and returns its exit code.
func startServe(t *testing.T, dbURL string, args ...string) (base, body string, stop func() int, stderr *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	done := make(chan int, 1)
	args = append([]string{"serve", "--addr", "127.0.0.1:0", "--database-url", dbURL, "--log-level", "warn"}, args...)
	go func() { done <- run(ctx, args, stdout, stderr) }()

	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := curlLine.FindStringSubmatch(stdout.String()); m != nil {
			base, demoKey, body = m[1], m[2], m[3]
			break
		}
		select {
		case code := <-done:
			cancel()
			t.Fatalf("serve exited early with %d: %s", code, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("serve printed no curl line; stdout %q stderr %q", stdout.String(), stderr.String())
		}
	}
	stopped := false
	stop = func() int {
		stopped = true
		cancel()
		select {
		case code := <-done:
			return code
		case <-time.After(30 * time.Second):
			t.Fatal("serve did not stop within 30s")
			return -1
		}
	}
	t.Cleanup(func() {
		if !stopped {
			stop()
		}
	})
	return base, body, stop, stderr
}

type demoDevice struct {
	Name        string `json:"name"`
	Address     string `json:"address"`
	State       string `json:"state"`
	StateReason string `json:"state_reason"`
}

func demoDevices(t *testing.T, base string) map[string]demoDevice {
	t.Helper()
	resp := authDo(t, http.MethodGet, base+"/v1/devices?pool=demo", "")
	defer resp.Body.Close()
	var list struct{ Devices []demoDevice }
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	out := map[string]demoDevice{}
	for _, d := range list.Devices {
		out[d.Name] = d
	}
	return out
}

func acquire(t *testing.T, base, body string) int {
	t.Helper()
	resp := authDo(t, http.MethodPost, base+"/v1/leases", body)
	resp.Body.Close()
	return resp.StatusCode
}

// The demo as "make run" starts it: the printed curl acquires a device,
// the dead device goes offline on its turn, and a restart re-points the
// demo devices at the new listeners and brings the dead one back to idle.
func TestServeDemo(t *testing.T) {
	dbURL := dbtest.NewDB(t)
	base, body, stop, stderr := startServe(t, dbURL, "--demo", "3")
	if body != `{"pool":"demo","wait_seconds":10}` {
		t.Errorf("printed curl body %s", body)
	}

	// demo-1 (dead) is the least recently idle: the first acquire probes
	// it, takes it offline and leases the next one.
	if code := acquire(t, base, body); code != http.StatusCreated {
		t.Fatalf("first acquire: %d", code)
	}
	devs := demoDevices(t, base)
	if len(devs) != 3 {
		t.Fatalf("want 3 demo devices, got %v", devs)
	}
	if d := devs["demo-1"]; d.State != "offline" || !strings.Contains(d.StateReason, "connection refused") {
		t.Errorf("dead device: %+v", d)
	}
	if code := acquire(t, base, body); code != http.StatusCreated {
		t.Fatalf("second acquire: %d", code)
	}
	// Both live devices are leased and the dead one is offline: nothing left.
	if code := acquire(t, base, `{"pool":"demo"}`); code != http.StatusServiceUnavailable {
		t.Errorf("third acquire: %d, want 503", code)
	}
	// Free the live devices: they are idle now, the dead one offline.
	if code := releaseAll(t, base); code != http.StatusNoContent {
		t.Fatalf("release: %d", code)
	}
	if code := stop(); code != 0 {
		t.Fatalf("serve exit code %d after stop; stderr: %s", code, stderr.String())
	}

	// Restart: new ports, upserted devices, the offline one idle again and
	// at the front of the idle queue, so the first acquire reaches it.
	base2, body2, stop2, _ := startServe(t, dbURL, "--demo", "3", "--migrate=false")
	again := demoDevices(t, base2)
	for name, d := range again {
		if d.Address == devs[name].Address {
			t.Errorf("%s kept its old address %s", name, d.Address)
		}
		if d.State != "idle" {
			t.Errorf("%s after restart: %+v, want idle", name, d)
		}
	}
	if code := acquire(t, base2, body2); code != http.StatusCreated {
		t.Fatalf("acquire after restart: %d", code)
	}
	if d := demoDevices(t, base2)["demo-1"]; d.State != "offline" {
		t.Errorf("first acquire after restart did not reach the dead device first: %+v", d)
	}
	if code := stop2(); code != 0 {
		t.Errorf("second serve exit code %d", code)
	}
}

// releaseAll releases every active lease and returns the last status.
func releaseAll(t *testing.T, base string) int {
	t.Helper()
	resp := authDo(t, http.MethodGet, base+"/v1/leases?active=true", "")
	var list struct{ Leases []struct{ ID string } }
	err := json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	code := http.StatusNoContent
	for _, l := range list.Leases {
		resp := authDo(t, http.MethodDelete, base+"/v1/leases/"+l.ID, "")
		resp.Body.Close()
		code = resp.StatusCode
	}
	return code
}

// On shutdown a waiting acquire is answered 503 with Retry-After at once,
// and the server does not sit out its grace period for it.
func TestServeShutdownAnswersWaiters(t *testing.T) {
	dbURL := dbtest.NewDB(t)
	base, _, stop, _ := startServe(t, dbURL, "--demo", "2")
	if code := acquire(t, base, `{"pool":"demo"}`); code != http.StatusCreated {
		t.Fatalf("acquire: %d", code)
	}
	answered := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/leases", strings.NewReader(`{"pool":"demo","wait_seconds":60}`))
		req.Header.Set("Authorization", "Bearer "+demoKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			answered <- nil
			return
		}
		resp.Body.Close()
		answered <- resp
	}()
	waitingDeadline := time.Now().Add(10 * time.Second)
	for demoWaiting(t, base) != 1 {
		if time.Now().After(waitingDeadline) {
			t.Fatal("the acquire never started waiting")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	if code := stop(); code != 0 {
		t.Fatalf("serve exit code %d", code)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("shutdown took %v with a waiting acquire", took)
	}
	resp := <-answered
	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("the waiting acquire got %+v, want 503 with Retry-After", resp)
	}
}

// demoWaiting is how many acquires wait on pool demo at this instance.
func demoWaiting(t *testing.T, base string) int {
	t.Helper()
	resp := authDo(t, http.MethodGet, base+"/v1/pools", "")
	defer resp.Body.Close()
	var list struct {
		Pools []struct {
			Name    string `json:"name"`
			Waiting int    `json:"waiting"`
		} `json:"pools"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Pools {
		if p.Name == "demo" {
			return p.Waiting
		}
	}
	return 0
}
