package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/db/dbtest"
	"github.com/devalloc/devalloc/db/devalloctype"
	"github.com/devalloc/devalloc/db/probe"
)

// fuzzServer is the handler FuzzAcquireRequestDecoding drives in-process,
// built once per fuzz target on its own database.
type fuzzServer struct {
	h             http.Handler
	alloc         *db.Allocator
	logs          *logRecorder
	admin, client string
	count         func(t *testing.T) (devices, activeLeases int)
}

func newFuzzServer(f *testing.F) *fuzzServer {
	f.Helper()
	pool, _ := dbtest.NewPool(f)
	logs := &logRecorder{}
	log := slog.New(logs)
	alloc := db.New(pool, db.Config{
		Prober:         probe.Func(func(context.Context, probe.Kind, string) error { return nil }),
		MaxWait:        time.Second, // no input may make an acquire wait longer
		HealthInterval: time.Hour,
		Logger:         log,
	})
	if err := alloc.Start(f.Context()); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(alloc.Stop)
	store := db.NewKeyStore(pool)
	admin, _, err := store.Create(f.Context(), "fuzz-admin", db.RoleAdmin)
	if err != nil {
		f.Fatal(err)
	}
	client, _, err := store.Create(f.Context(), "fuzz", db.RoleClient)
	if err != nil {
		f.Fatal(err)
	}
	s := &fuzzServer{
		h:     New(alloc, Options{Logger: log, Authenticate: BearerAuth(store)}),
		alloc: alloc, logs: logs, admin: "Bearer " + admin, client: "Bearer " + client,
	}
	// Two idle devices per pool, so sequential acquires never wait: each
	// lease is released before the next input.
	for _, d := range []struct{ name, pool, labels string }{
		{"fz-d1", "default", `{"os":"android","model":"pixel-7"}`},
		{"fz-d2", "default", `{"os":"android","model":"pixel-8"}`},
		{"fz-i1", "ios", `{"os":"ios","version":"17"}`},
		{"fz-i2", "ios", `{"os":"ios","version":"18","odd":"\u202e\u200d📱"}`},
	} {
		body := `{"name":"` + d.name + `","pool":"` + d.pool + `","labels":` + d.labels + `,"address":"127.0.0.1:1","probe":"none"}`
		if r := s.serve(f, "POST", "/v1/devices", s.admin, "", []byte(body)); r.Code != http.StatusCreated {
			f.Fatalf("setup: %d %s", r.Code, r.Body)
		}
	}
	s.count = func(t *testing.T) (devices, active int) {
		t.Helper()
		err := pool.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM devalloc.devices),
			(SELECT count(*) FROM devalloc.leases WHERE released_at IS NULL)`).Scan(&devices, &active)
		if err != nil {
			t.Fatal(err)
		}
		return devices, active
	}
	return s
}

func (s *fuzzServer) serve(t testing.TB, method, path, key, idemKey string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req := httptest.NewRequestWithContext(ctx, method, path, bytes.NewReader(body))
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", key)
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	rec := httptest.NewRecorder()
	s.h.ServeHTTP(rec, req)
	return rec
}

// FuzzAcquireRequestDecoding feeds arbitrary bytes as the body of POST
// /v1/leases (as a client key) or, when device is set, of POST /v1/devices
// (as an admin key), with an arbitrary Idempotency-Key. Whatever the input:
// no 5xx and nothing logged at Error, a JSON body (problem+json for errors,
// with the HTTP status), and whatever was created is removed again, so no
// input leaves a lease or device behind.
func FuzzAcquireRequestDecoding(f *testing.F) {
	for _, seed := range []struct {
		body   string
		idem   string
		device bool
	}{
		{``, "", false},
		{`{}`, "", false},
		{`null`, "", false},
		{`{"pool":"default"}`, "", false},
		{`{"pool":"default","labels":{"os":"android"},"ttl_seconds":60,"holder":"ci-job-1"}`, "", false},
		{`{"pool":"ios","labels":{"odd":"\u202e\u200d📱"},"wait_seconds":1}`, "retry-1", false},
		{`{"pool":"default","labels":{"model":"pixel-9"}}`, "", false},
		{`{"pool":"nope","wait_seconds":1}`, "", false},
		{`{"pool":"default","wait_seconds":1e30}`, "", false},
		{`{"pool":"default","ttl_seconds":-1}`, "", false},
		{`{"pool":"default","ttl_seconds":9223372036854775807}`, "", false},
		{`{"pool":"default","NAME":1,"Pool":"x"}`, "", false},
		{`{"pool":"def` + "\x00" + `ault"}`, "", false},
		{`{"pool":"default","labels":{"os":"android\u0000"}}`, "", false},
		{`{"pool":"default","holder":"\u0000"}`, "", false},
		{`{"pool":"default","holder":"` + "\xff\xfe" + `"}`, "", false},
		{`{"pool":"default"}`, "\xff", false},
		{`{"pool":"'; DROP TABLE devalloc.leases; --"}`, "", false},
		{`[{"pool":"default"}]`, "", false},
		{`{"pool":"default"} trailing`, "", false},
		{`{"pool":"default","labels":{"a":"1","b":"2","c":"3","d":"4","e":"5","f":"6","g":"7","h":"8","i":"9","j":"10","k":"11","l":"12","m":"13","n":"14","o":"15","p":"16","q":"17","r":"18","s":"19","t":"20","u":"21","v":"22","w":"23","x":"24","y":"25","z":"26","A":"27","B":"28","C":"29","D":"30","E":"31","F":"32","G":"33"}}`, "", false},
		{`{"name":"fz-new","address":"127.0.0.1:2"}`, "", true},
		{`{"name":"fz-new","pool":"ios","labels":{"os":"ios","k.8s/x_y-z":"\u202e"},"address":"10.0.0.1:5555","probe":"none"}`, "", true},
		{`{"name":"fz-d1","address":"127.0.0.1:2"}`, "", true},
		{`{"name":"fz-new","address":"x","labels":{"os":"\u0000"}}`, "", true},
		{`{"name":"fz-new","address":"\u0000"}`, "", true},
		{`{"name":"-bad","address":"x"}`, "", true},
		{`{"name":"fz-new","address":"x","probe":"icmp"}`, "", true},
	} {
		f.Add([]byte(seed.body), seed.idem, seed.device)
	}
	s := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte, idemKey string, device bool) {
		devices0, active0 := s.count(t)
		logged := len(s.logs.errors())
		method, path, key := "POST", "/v1/leases", s.client
		if device {
			path, key = "/v1/devices", s.admin
		}
		rec := s.serve(t, method, path, key, idemKey, body)
		status, raw := rec.Code, rec.Body.Bytes()
		errs := s.logs.errors()[logged:]
		if status >= 500 || len(errs) > 0 {
			t.Fatalf("%d %s; logged at Error: %q", status, raw, errs)
		}
		ct := rec.Header().Get("Content-Type")
		var v map[string]any
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatalf("%d %s body is not a JSON object: %v: %q", status, ct, err, raw)
		}
		if status >= 400 {
			if ct != "application/problem+json" {
				t.Fatalf("error %d with Content-Type %q: %s", status, ct, raw)
			}
			if got, _ := v["status"].(float64); int(got) != status {
				t.Fatalf("problem status %v, HTTP %d: %s", v["status"], status, raw)
			}
			if title, _ := v["title"].(string); title == "" {
				t.Fatalf("problem without a title: %s", raw)
			}
		} else if ct != "application/json" {
			t.Fatalf("%d with Content-Type %q: %s", status, ct, raw)
		}
		switch {
		case status == http.StatusCreated && device:
			var d Device
			if err := json.Unmarshal(raw, &d); err != nil {
				t.Fatal(err)
			}
			if d.State != devalloctype.StateIdle || d.Name == "" {
				t.Fatalf("created device %+v", d)
			}
			if r := s.serve(t, "DELETE", "/v1/devices/"+url.PathEscape(d.Name), s.admin, "", nil); r.Code != http.StatusNoContent {
				t.Fatalf("delete the created device: %d %s", r.Code, r.Body)
			}
		case status == http.StatusCreated:
			var l Lease
			if err := json.Unmarshal(raw, &l); err != nil {
				t.Fatal(err)
			}
			checkFuzzLease(t, body, l)
			if r := s.serve(t, "DELETE", "/v1/leases/"+l.ID.String(), s.client, "", nil); r.Code != http.StatusNoContent {
				t.Fatalf("release the lease: %d %s", r.Code, r.Body)
			}
		case status < 300:
			t.Fatalf("unexpected success %d: %s", status, raw)
		}
		if devices, active := s.count(t); devices != devices0 || active != active0 {
			t.Fatalf("left behind: devices %d -> %d, active leases %d -> %d (response %d %s)",
				devices0, devices, active0, active, status, raw)
		}
	})
}

// checkFuzzLease checks a granted lease against the request that got it.
// A replayed lease (same Idempotency-Key as an earlier input) may be an
// ended one; a fresh one is active and matches the selector.
func checkFuzzLease(t *testing.T, body []byte, l Lease) {
	t.Helper()
	if l.Owner != "fuzz" {
		t.Fatalf("lease owner %q, want fuzz", l.Owner)
	}
	var req AcquireLeaseRequest
	if json.Unmarshal(body, &req) != nil || l.ReleasedAt != nil {
		return
	}
	if req.Pool == "" {
		req.Pool = "default"
	}
	if l.Device.Pool != req.Pool {
		t.Fatalf("asked for pool %q, got a device of pool %q", req.Pool, l.Device.Pool)
	}
	if !devalloctype.Labels(l.Device.Labels).Contains(devalloctype.Labels(req.Labels)) {
		t.Fatalf("asked for labels %v, got device labels %v", req.Labels, l.Device.Labels)
	}
}
