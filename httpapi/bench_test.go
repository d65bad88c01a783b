package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/db/dbtest"
	"github.com/devalloc/devalloc/db/probe"
)

// BenchmarkHTTPAcquireRelease times POST /v1/leases {"pool":"p"} then
// DELETE /v1/leases/{id}, with a client key, through the whole API (bearer
// auth, Huma, the allocator, PostgreSQL) on a pool of 100 probe-"none"
// devices: one op is the cycle. sequential is one client; parallel is
// b.RunParallel with SetParallelism(16) (16 × GOMAXPROCS clients) sharing
// one keep-alive transport. allocs/op counts the whole process: client,
// server and pgx.
//
//	go test ./httpapi -run '^$' -bench HTTPAcquireRelease -benchtime 2000x
func BenchmarkHTTPAcquireRelease(b *testing.B) {
	url, secret := startBenchAPI(b, 100)
	client := &http.Client{Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256}}
	b.Cleanup(client.CloseIdleConnections)
	c := benchClient{http: client, url: url, secret: secret}

	b.Run("sequential", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := c.cycle(b.Context()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(16)
		ctx := b.Context()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := c.cycle(ctx); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// startBenchAPI runs the API as serve builds it — allocator, key store,
// bearer auth, serve's default of 10 pool connections — on a fresh
// database with devices probe-"none" devices in pool "p", and returns its
// URL and a client key's secret.
func startBenchAPI(b *testing.B, devices int) (url, secret string) {
	b.Helper()
	cfg, err := pgxpool.ParseConfig(dbtest.NewDB(b))
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = 10
	pool, err := pgxpool.NewWithConfig(b.Context(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	quiet := slog.New(slog.DiscardHandler)
	alloc := db.New(pool, db.Config{
		Prober: probe.Func(func(context.Context, probe.Kind, string) error { return nil }),
		Logger: quiet,
	})
	if err := alloc.Start(b.Context()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(alloc.Stop)
	for i := range devices {
		spec := db.DeviceSpec{Name: fmt.Sprintf("d%03d", i), Pool: "p", Address: "x", Probe: "none"}
		if _, err := alloc.CreateDevice(b.Context(), spec); err != nil {
			b.Fatal(err)
		}
	}
	keys := db.NewKeyStore(pool)
	secret, _, err = keys.Create(b.Context(), "bench", db.RoleClient)
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(New(alloc, Options{Authenticate: BearerAuth(keys), Logger: quiet}))
	b.Cleanup(srv.Close)
	return srv.URL, secret
}

// benchClient is a plain net/http client of the API, as an SDK-less caller
// would write it.
type benchClient struct {
	http   *http.Client
	url    string
	secret string
}

var acquireBody = []byte(`{"pool":"p"}`)

// cycle acquires a device and releases it again.
func (c benchClient) cycle(ctx context.Context) error {
	var lease struct {
		ID string `json:"id"`
	}
	if err := c.do(ctx, http.MethodPost, "/v1/leases", acquireBody, http.StatusCreated, &lease); err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, "/v1/leases/"+lease.ID, nil, http.StatusNoContent, nil)
}

// do sends one request and checks its status; out, if set, receives the
// JSON answer. The body is always read to the end, so the connection is
// reused.
func (c benchClient) do(ctx context.Context, method, path string, body []byte, want int, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.secret)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, raw)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}
