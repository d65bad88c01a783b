package httpapi

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/db/dbtest"
	"github.com/devalloc/devalloc/db/probe"
)

// corpusFixture is a server with real bearer auth on its own database, with
// keys, devices and leases in place, for tests that throw bad requests at it.
type corpusFixture struct {
	t      *testing.T
	pool   *pgxpool.Pool
	alloc  *db.Allocator
	srv    *httptest.Server
	client *http.Client
	logs   *logRecorder

	// Authorization header values.
	admin, client1, client2, revoked string
	// Active leases of client1 and client2, and an ended one of client1.
	lease1, lease2, ended1 Lease
}

// corpusDevices are registered by newCorpusFixture: pool alpha is fully
// leased (one device per client), beta and gamma have idle devices.
var corpusDevices = []struct {
	name, pool string
	labels     map[string]string
}{
	{"dev-a1", "alpha", map[string]string{"os": "android", "model": "pixel-7"}},
	{"dev-a2", "alpha", map[string]string{"os": "android", "model": "pixel-8"}},
	{"dev-b1", "beta", map[string]string{"os": "ios"}},
	{"dev-g1", "gamma", map[string]string{"os": "android", "tier": "cheap"}},
	{"dev-g2", "gamma", map[string]string{"os": "android", "tier": "cheap"}},
}

func newCorpusFixture(t *testing.T) *corpusFixture {
	t.Helper()
	pool, _ := dbtest.NewPool(t)
	logs := &logRecorder{}
	log := slog.New(logs)
	alloc := db.New(pool, db.Config{
		Prober: probe.Func(func(context.Context, probe.Kind, string) error { return nil }),
		// Nothing in the background may change the database between two
		// snapshots: the leases outlive the test, no device is offline.
		DefaultTTL:     time.Hour,
		HealthInterval: time.Hour,
		MaxWait:        2 * time.Second,
		Logger:         log,
	})
	if err := alloc.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(alloc.Stop)
	store := db.NewKeyStore(pool)
	srv := httptest.NewServer(New(alloc, Options{Logger: log, Authenticate: BearerAuth(store), MaxWaitingPerKey: 1}))
	t.Cleanup(srv.Close)
	f := &corpusFixture{
		t: t, pool: pool, alloc: alloc, srv: srv, logs: logs,
		// Redirects are answers too: the corpus wants to see them.
		client: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}
	t.Cleanup(f.client.CloseIdleConnections)
	mk := func(name, role string) string {
		secret, _, err := store.Create(t.Context(), name, role)
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + secret
	}
	f.admin = mk("ops", db.RoleAdmin)
	f.client1 = mk("ci-one", db.RoleClient)
	f.client2 = mk("ci-two", db.RoleClient)
	// Revoked before it is ever used, so no cache remembers it as valid.
	f.revoked = mk("gone", db.RoleClient)
	if err := store.Revoke(t.Context(), "gone"); err != nil {
		t.Fatal(err)
	}

	for _, d := range corpusDevices {
		body, _ := json.Marshal(map[string]any{"name": d.name, "pool": d.pool, "labels": d.labels, "address": "127.0.0.1:1", "probe": "none"})
		f.mustStatus(f.do(t, "POST", "/v1/devices", f.admin, nil, string(body)), http.StatusCreated)
	}
	acquire := func(key, pool string, header http.Header) Lease {
		r := f.mustStatus(f.do(t, "POST", "/v1/leases", key, header, `{"pool":"`+pool+`","holder":"corpus"}`), http.StatusCreated)
		var l Lease
		if err := json.Unmarshal(r.body, &l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	f.ended1 = acquire(f.client1, "gamma", http.Header{"Idempotency-Key": {"corpus-ended1"}})
	f.mustStatus(f.do(t, "DELETE", "/v1/leases/"+f.ended1.ID.String(), f.client1, nil, ""), http.StatusNoContent)
	f.lease1 = acquire(f.client1, "alpha", nil)
	f.lease2 = acquire(f.client2, "alpha", nil)
	return f
}

// do sends one request; key is the Authorization header ("" for none) and
// body is sent verbatim (nil body for "").
func (f *corpusFixture) do(t testing.TB, method, path, key string, header http.Header, body string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, f.srv.URL+path, rd)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", key)
	}
	for k, vs := range header {
		req.Header.Del(k)
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: raw}
}

func (f *corpusFixture) mustStatus(r response, status int) response {
	f.t.Helper()
	if r.status != status {
		f.t.Fatalf("setup: status %d, want %d: %s", r.status, status, r.body)
	}
	return r
}

// corpusTables are the tables a rejected request must leave alone.
var corpusTables = []string{"devalloc.devices", "devalloc.leases", "devalloc.api_keys"}

// snapshot fingerprints every row of corpusTables.
func (f *corpusFixture) snapshot(t *testing.T) map[string]string {
	t.Helper()
	out := make(map[string]string, len(corpusTables))
	for _, table := range corpusTables {
		var sum string
		err := f.pool.QueryRow(t.Context(),
			`SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM `+table+` t`).Scan(&sum)
		if err != nil {
			t.Fatalf("snapshot %s: %v", table, err)
		}
		out[table] = sum
	}
	return out
}
