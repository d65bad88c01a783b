package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/db/dbtest"
	"github.com/devalloc/devalloc/db/probe"
)

// deadAddress is the one device address whose probe fails in an env.
const deadAddress = "203.0.113.1:9"

// env is one API server on its own fresh database.
type env struct {
	t     *testing.T
	srv   *httptest.Server
	alloc *db.Allocator
	pool  *pgxpool.Pool // the env's database, for checks the API cannot make
	logs  *logRecorder
	key   string // sent as X-Test-Key when the env authenticates
}

// newEnv starts an allocator (every probe succeeds) and the API on it.
// authn nil means the default (anonymous admin). The test fails at cleanup
// if anything was logged at Error: client mistakes must never be.
func newEnv(t *testing.T, authn Authenticator) *env {
	t.Helper()
	return newEnvWith(t, Options{Authenticate: authn})
}

// newEnvWith is newEnv with more options; their Logger is the env's own.
func newEnvWith(t *testing.T, opts Options) *env {
	t.Helper()
	pool, _ := dbtest.NewPool(t)
	cfg := db.Config{
		Prober: probe.Func(func(_ context.Context, _ probe.Kind, address string) error {
			if address == deadAddress {
				return errors.New("connection refused")
			}
			return nil
		}),
		ReapInterval:    100 * time.Millisecond,
		RecheckInterval: 200 * time.Millisecond,
	}
	if opts.Metrics != nil {
		cfg.Observer = opts.Metrics
	}
	alloc := db.New(pool, cfg)
	if err := alloc.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(alloc.Stop)
	logs := &logRecorder{}
	opts.Logger = slog.New(logs)
	srv := httptest.NewServer(New(alloc, opts))
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		if errs := logs.errors(); len(errs) > 0 {
			t.Errorf("logged at Error: %q", errs)
		}
	})
	return &env{t: t, srv: srv, alloc: alloc, pool: pool, logs: logs}
}

// as returns a copy of e whose requests carry key.
func (e *env) as(key string) *env {
	c := *e
	c.key = key
	return &c
}

// response is a finished request.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

// do sends body (a string is sent verbatim, anything else as JSON, nil as
// no body).
func (e *env) do(method, path string, body any, header ...string) response {
	e.t.Helper()
	return e.doCtx(e.t.Context(), method, path, body, header...)
}

func (e *env) doCtx(ctx context.Context, method, path string, body any, header ...string) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if e.key != "" {
		req.Header.Set("X-Test-Key", e.key)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return response{status: -1, body: []byte(err.Error())}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: raw}
}

// expect fails the test unless r has status; it returns r for chaining.
func expect(t *testing.T, r response, status int) response {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body: %s", r.status, status, r.body)
	}
	if status >= 400 {
		if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
			t.Fatalf("error Content-Type %q, want application/problem+json; body: %s", ct, r.body)
		}
		var p map[string]any
		if err := json.Unmarshal(r.body, &p); err != nil {
			t.Fatalf("problem body is not JSON: %v: %s", err, r.body)
		}
		if got, _ := p["status"].(float64); int(got) != status {
			t.Fatalf("problem status %v, want %d: %s", p["status"], status, r.body)
		}
		if title, _ := p["title"].(string); title == "" {
			t.Fatalf("problem without a title: %s", r.body)
		}
		if detail, _ := p["detail"].(string); detail == "" {
			t.Fatalf("problem without a detail: %s", r.body)
		}
		details, _ := p["errors"].([]any)
		for _, d := range details {
			if msg, _ := d.(map[string]any)["message"].(string); msg == "" {
				t.Fatalf("problem detail without a message: %s", r.body)
			}
		}
	}
	return r
}

func decode[T any](t *testing.T, r response) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("decode %T: %v: %s", v, err, r.body)
	}
	return v
}

// problemType returns the problem's type member.
func problemType(t *testing.T, r response) string {
	t.Helper()
	p := decode[map[string]any](t, r)
	s, _ := p["type"].(string)
	return s
}

// keysOf returns the sorted keys of a JSON object.
func keysOf(t *testing.T, raw []byte) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("not an object: %v: %s", err, raw)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// mustUTC checks s is an RFC 3339 time in UTC ("Z").
func mustUTC(t *testing.T, field, s string) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("%s %q is not RFC 3339: %v", field, s, err)
	}
	if !strings.HasSuffix(s, "Z") {
		t.Fatalf("%s %q is not in UTC", field, s)
	}
	return ts
}

// createDevice registers a device through the API.
func (e *env) createDevice(name, pool string, labels map[string]string) Device {
	e.t.Helper()
	body := map[string]any{"name": name, "address": "127.0.0.1:1", "probe": "none"}
	if pool != "" {
		body["pool"] = pool
	}
	if labels != nil {
		body["labels"] = labels
	}
	return decode[Device](e.t, expect(e.t, e.do("POST", "/v1/devices", body), http.StatusCreated))
}

// acquire takes a device from pool with no wait.
func (e *env) acquire(body map[string]any) Lease {
	e.t.Helper()
	var b any // a nil map would be sent as the JSON null
	if body != nil {
		b = body
	}
	return decode[Lease](e.t, expect(e.t, e.do("POST", "/v1/leases", b), http.StatusCreated))
}

// waitReady waits until the instance is ready, its listener connected and
// the instance registered: only then can requests join the pool's line, and
// a group acquire that may not wait goes through the line.
func (e *env) waitReady() {
	e.t.Helper()
	waitFor(e.t, "readiness", func() bool { return e.do("GET", "/readyz", nil).status == http.StatusOK })
}

// acquireAsync starts an acquire (typically with wait_seconds) and returns
// where its response arrives; the request ends with the test.
func (e *env) acquireAsync(body map[string]any) <-chan response {
	done := make(chan response, 1)
	go func() { done <- e.doCtx(e.t.Context(), "POST", "/v1/leases", body) }()
	return done
}

// count runs a SELECT count(*) ... on the env's database.
func (e *env) count(query string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(e.t.Context(), query, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", query, err)
	}
	return n
}

// waitFor polls cond until it holds or fails the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logRecorder is a slog.Handler keeping Error records.
type logRecorder struct {
	mu   sync.Mutex
	errs []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelError {
		return nil
	}
	msg := r.Message
	r.Attrs(func(a slog.Attr) bool {
		msg += " " + a.String()
		return true
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, msg)
	return nil
}

func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

func (l *logRecorder) errors() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}
