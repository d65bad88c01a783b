package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/db/dbtest"
	"github.com/devalloc/devalloc/db/probe"
)

// countingKeys counts database lookups behind the cache.
type countingKeys struct {
	store   *db.KeyStore
	lookups int
}

func (c *countingKeys) Authenticate(ctx context.Context, secret string) (db.APIKey, error) {
	c.lookups++
	return c.store.Authenticate(ctx, secret)
}

// TestBearerKeys drives the real key store through HTTP: 401s with a
// challenge, roles, and revocation.
func TestBearerKeys(t *testing.T) {
	pool, _ := dbtest.NewPool(t)
	alloc := db.New(pool, db.Config{Prober: probe.Func(func(context.Context, probe.Kind, string) error { return nil })})
	if err := alloc.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(alloc.Stop)
	store := db.NewKeyStore(pool)
	keys := &countingKeys{store: store}
	cache := newKeyCache(keys, 0) // no caching: revocation shows at once
	srv := httptest.NewServer(New(alloc, Options{Logger: slog.New(slog.DiscardHandler), Authenticate: cache.authenticate}))
	t.Cleanup(srv.Close)

	admin, _, err := store.Create(t.Context(), "ops", db.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	client, _, err := store.Create(t.Context(), "ci", db.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	call := func(key, method, path, body string) (int, http.Header, map[string]any) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), method, srv.URL+path, strings.NewReader(body))
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		if key != "" {
			req.Header.Set("Authorization", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var out map[string]any
		_ = json.Unmarshal(raw, &out)
		return resp.StatusCode, resp.Header, out
	}

	for _, bad := range []string{"", "Bearer", "Bearer ", "Basic b3BzOnNlY3JldA==", "Bearer dva_not-a-key", admin} {
		status, h, body := call(bad, "GET", "/v1/pools", "")
		if status != http.StatusUnauthorized || h.Get("WWW-Authenticate") != `Bearer realm="devalloc"` ||
			h.Get("Content-Type") != "application/problem+json" || body["type"] != "urn:devalloc:problem:unauthorized" {
			t.Fatalf("Authorization %q: %d %v %v", bad, status, h, body)
		}
	}
	if status, _, _ := call("", "GET", "/healthz", ""); status != http.StatusOK {
		t.Fatalf("healthz without a key: %d", status)
	}

	adminAuth, clientAuth := "Bearer "+admin, "bearer "+client // the scheme is case-insensitive
	if status, _, body := call(clientAuth, "POST", "/v1/devices", `{"name":"d1","address":"h:1"}`); status != http.StatusForbidden {
		t.Fatalf("client registers a device: %d %v", status, body)
	}
	if status, _, body := call(adminAuth, "POST", "/v1/devices", `{"name":"d1","address":"h:1"}`); status != http.StatusCreated {
		t.Fatalf("admin registers a device: %d %v", status, body)
	}
	status, _, lease := call(clientAuth, "POST", "/v1/leases", `{}`)
	if status != http.StatusCreated || lease["owner"] != "ci" {
		t.Fatalf("client acquires: %d %v", status, lease)
	}

	if err := store.Revoke(t.Context(), "ci"); err != nil {
		t.Fatal(err)
	}
	if status, _, _ := call(clientAuth, "POST", "/v1/leases/"+lease["id"].(string)+"/renew", `{}`); status != http.StatusUnauthorized {
		t.Fatalf("revoked key renews: %d", status)
	}
	// The admin revokes the orphaned lease.
	if status, _, _ := call(adminAuth, "DELETE", "/v1/leases/"+lease["id"].(string), ""); status != http.StatusNoContent {
		t.Fatalf("admin revokes: %d", status)
	}
	if status, _, got := call(adminAuth, "GET", "/v1/leases/"+lease["id"].(string), ""); status != http.StatusOK || got["end_reason"] != "revoked" {
		t.Fatalf("lease after revoke: %d %v", status, got)
	}
}

func TestKeyCacheSparesTheDatabase(t *testing.T) {
	pool, _ := dbtest.NewPool(t)
	store := db.NewKeyStore(pool)
	secret, _, err := store.Create(t.Context(), "ci", db.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	keys := &countingKeys{store: store}
	authn := newKeyCache(keys, keyCacheTTL).authenticate
	for range 5 {
		req := httptest.NewRequestWithContext(t.Context(), "GET", "/v1/pools", nil)
		req.Header.Set("Authorization", "Bearer "+secret)
		if p, err := authn(req); err != nil || p.Name != "ci" || p.Admin {
			t.Fatalf("principal %+v, %v", p, err)
		}
	}
	if keys.lookups != 1 {
		t.Fatalf("%d lookups for five requests within the cache TTL, want 1", keys.lookups)
	}
}

// flakyKeys answers from a fixed key until it is told the database is gone.
type flakyKeys struct {
	key  db.APIKey
	down bool
}

func (f *flakyKeys) Authenticate(context.Context, string) (db.APIKey, error) {
	if f.down {
		return db.APIKey{}, fmt.Errorf("look up key: %w", &pgconn.PgError{Code: "57P01"})
	}
	return f.key, nil
}

// While the database is away, a key verified shortly before still works;
// one never seen gets a 503, not a 401 or 500.
func TestKeyCacheGraceDuringOutage(t *testing.T) {
	keys := &flakyKeys{key: db.APIKey{Name: "ci", Role: db.RoleClient}}
	authn := newKeyCache(keys, 0).authenticate // expired at once
	req := func(secret string) *http.Request {
		r := httptest.NewRequestWithContext(t.Context(), "GET", "/v1/pools", nil)
		r.Header.Set("Authorization", "Bearer "+secret)
		return r
	}
	if _, err := authn(req("known")); err != nil {
		t.Fatal(err)
	}
	keys.down = true
	if p, err := authn(req("known")); err != nil || p.Name != "ci" {
		t.Fatalf("known key during an outage: %+v, %v", p, err)
	}
	_, err := authn(req("unseen"))
	var se huma.StatusError
	if !errors.As(err, &se) || se.GetStatus() != http.StatusServiceUnavailable {
		t.Fatalf("unseen key during an outage: %v, want 503", err)
	}
}

// deadlineKeys records how long each lookup was given.
type deadlineKeys struct {
	key   db.APIKey
	given []time.Duration
}

func (d *deadlineKeys) Authenticate(ctx context.Context, _ string) (db.APIKey, error) {
	deadline, _ := ctx.Deadline()
	d.given = append(d.given, time.Until(deadline))
	return d.key, nil
}

// A key seen before is refreshed within keyRefreshTimeout, so a slow
// database delays its request by that at most (then the grace applies); a
// key never seen may take keyLookupTimeout.
func TestKeyRefreshIsBoundedShort(t *testing.T) {
	keys := &deadlineKeys{key: db.APIKey{Name: "ci", Role: db.RoleClient}}
	authn := newKeyCache(keys, 0).authenticate // expired at once
	for range 2 {
		r := httptest.NewRequestWithContext(t.Context(), "GET", "/v1/pools", nil)
		r.Header.Set("Authorization", "Bearer known")
		if _, err := authn(r); err != nil {
			t.Fatal(err)
		}
	}
	if first := keys.given[0]; first <= keyRefreshTimeout || first > keyLookupTimeout {
		t.Fatalf("first lookup given %v, want keyLookupTimeout (%v)", first, keyLookupTimeout)
	}
	if again := keys.given[1]; again > keyRefreshTimeout {
		t.Fatalf("refresh of a cached key given %v, want at most %v", again, keyRefreshTimeout)
	}
}
