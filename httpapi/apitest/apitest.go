// Package apitest starts a real devalloc API — allocator, key store and
// HTTP handler with bearer auth — on a fresh test database, for the tests
// of packages that drive the API from outside (the SDK, the CLI).
package apitest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/db/dbtest"
	"github.com/devalloc/devalloc/db/probe"
	"github.com/devalloc/devalloc/httpapi"
)

// Server is a running API on its own database.
type Server struct {
	URL   string
	Pool  *pgxpool.Pool
	Alloc *db.Allocator
	Keys  *db.KeyStore
}

// Options adjust the server; the zero value is fine.
type Options struct {
	// Wrap, if set, goes in front of the API handler (to inject faults).
	Wrap func(http.Handler) http.Handler
}

// Start runs the API until the test ends. Every probe succeeds, and the
// reaper and re-checker run often, so tests see expiry and wake-ups quickly.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	pool, _ := dbtest.NewPool(t)
	alloc := db.New(pool, db.Config{
		Prober:          probe.Func(func(context.Context, probe.Kind, string) error { return nil }),
		ReapInterval:    100 * time.Millisecond,
		RecheckInterval: 200 * time.Millisecond,
	})
	if err := alloc.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(alloc.Stop)
	keys := db.NewKeyStore(pool)
	var h http.Handler = httpapi.New(alloc, httpapi.Options{Authenticate: httpapi.BearerAuth(keys)})
	if opts.Wrap != nil {
		h = opts.Wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &Server{URL: srv.URL, Pool: pool, Alloc: alloc, Keys: keys}
}

// Key creates an API key and returns its secret.
func (s *Server) Key(t testing.TB, name, role string) string {
	t.Helper()
	secret, _, err := s.Keys.Create(t.Context(), name, role)
	if err != nil {
		t.Fatal(err)
	}
	return secret
}
