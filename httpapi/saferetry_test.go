package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/db/dbtest"
)

// TestRequestsAnswerAfterConnectionsWereCut: after every database
// connection was terminated (a failover, a restart), the next requests of
// each kind, key lookup included, are answered as usual, not with a 503.
func TestRequestsAnswerAfterConnectionsWereCut(t *testing.T) {
	var cache *keyCache
	e := newEnvWith(t, Options{Authenticate: func(r *http.Request) (Principal, error) { return cache.authenticate(r) }})
	store := db.NewKeyStore(e.pool)
	cache = newKeyCache(store, 0) // no caching: every request looks its key up
	secret, _, err := store.Create(t.Context(), "ops", db.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"d1", "d2"} {
		if _, err := e.alloc.CreateDevice(t.Context(), db.DeviceSpec{Name: name, Pool: "p", Address: "127.0.0.1:1", Probe: "none"}); err != nil {
			t.Fatal(err)
		}
	}
	url := dbURLOf(t, e)
	auth := []string{"Authorization", "Bearer " + secret}
	call := func(what string, want int, method, path string, body any) response {
		t.Helper()
		// More idle connections to lose than the background loops (the
		// reaper, the re-checker) would use up before the request; none
		// left broken by an earlier step.
		e.pool.Reset()
		warm := make(chan error)
		for range 6 {
			go func() {
				_, err := e.pool.Exec(t.Context(), "SELECT pg_sleep(0.02)")
				warm <- err
			}()
		}
		for range 6 {
			if err := <-warm; err != nil {
				t.Fatalf("%s: warm the pool: %v", what, err)
			}
		}
		if n := dbtest.CutConnections(t, url); n == 0 {
			t.Fatalf("%s: no connection was cut", what)
		}
		r := e.do(method, path, body, auth...)
		if r.status != want {
			t.Errorf("%s after the connections were cut: %s, want %d", what, r, want)
		}
		return r
	}
	r := call("acquire", http.StatusCreated, "POST", "/v1/leases", map[string]any{"pool": "p"})
	lease := decode[Lease](t, r)
	call("acquire with wait", http.StatusCreated, "POST", "/v1/leases", map[string]any{"pool": "p", "wait_seconds": 2})
	call("renew", http.StatusOK, "POST", "/v1/leases/"+lease.ID.String()+"/renew", map[string]any{})
	call("release", http.StatusNoContent, "DELETE", "/v1/leases/"+lease.ID.String(), nil)
	call("list leases", http.StatusOK, "GET", "/v1/leases", nil)
	call("list devices", http.StatusOK, "GET", "/v1/devices", nil)
	call("pools", http.StatusOK, "GET", "/v1/pools", nil)
}

// dbURLOf is the URL of the env's own database.
func dbURLOf(t *testing.T, e *env) string {
	t.Helper()
	return e.pool.Config().ConnString()
}

// TestClientGoneDuringKeyLookupIsNoServerError: a client that disconnects
// while its key is looked up gets the quiet 499 of a client gone, not a
// 500 and an Error log line (anyone could flood the logs that way, no key
// needed).
func TestClientGoneDuringKeyLookupIsNoServerError(t *testing.T) {
	pool, _ := dbtest.NewPool(t)
	store := db.NewKeyStore(pool)
	alloc := db.New(pool, db.Config{})
	logs := &logRecorder{}
	ctx, cancel := context.WithCancel(t.Context())
	// The client goes away while the lookup runs.
	lookup := keyLookupFunc(func(lctx context.Context, secret string) (db.APIKey, error) {
		cancel()
		return store.Authenticate(lctx, secret)
	})
	h := New(alloc, Options{Logger: slog.New(logs), Authenticate: newKeyCache(lookup, 0).authenticate})
	req := httptest.NewRequestWithContext(ctx, "GET", "/v1/pools", nil)
	req.Header.Set("Authorization", "Bearer dva_whoever")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != statusClientClosedRequest {
		t.Errorf("client gone during the key lookup: %d %s, want %d", rec.Code, rec.Body, statusClientClosedRequest)
	}
	if errs := logs.errors(); len(errs) > 0 {
		t.Errorf("client gone during the key lookup logged at Error: %q", errs)
	}
}

// keyLookupFunc is a KeyLookup from a function.
type keyLookupFunc func(ctx context.Context, secret string) (db.APIKey, error)

func (f keyLookupFunc) Authenticate(ctx context.Context, secret string) (db.APIKey, error) {
	return f(ctx, secret)
}
