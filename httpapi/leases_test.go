package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestAcquireLeaseShape(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("p1", "android", map[string]string{"os": "android", "model": "pixel"})

	r := expect(t, e.do("POST", "/v1/leases",
		map[string]any{"pool": "android", "labels": map[string]string{"os": "android"}, "ttl_seconds": 120, "holder": "job-1"},
		"Idempotency-Key", "k-1"), http.StatusCreated)
	wantKeys := []string{"acquired_at", "device", "end_reason", "expires_at", "fencing_token", "holder", "id", "owner", "released_at"}
	if got := keysOf(t, r.body); !slices.Equal(got, wantKeys) {
		t.Fatalf("lease keys %v, want %v", got, wantKeys)
	}
	raw := decode[map[string]any](t, r)
	if got := keysOf(t, mustJSON(t, raw["device"])); !slices.Equal(got, []string{"address", "labels", "name", "pool"}) {
		t.Fatalf("lease.device keys %v", got)
	}
	if raw["released_at"] != nil || raw["end_reason"] != nil {
		t.Fatalf("active lease has released_at/end_reason: %s", r.body)
	}
	acquired := mustUTC(t, "acquired_at", raw["acquired_at"].(string))
	expires := mustUTC(t, "expires_at", raw["expires_at"].(string))
	if d := expires.Sub(acquired); d < 119*time.Second || d > 121*time.Second {
		t.Fatalf("ttl_seconds 120 gave a lease of %v", d)
	}
	lease := decode[Lease](t, r)
	if lease.Owner != "anonymous" || lease.Holder != "job-1" || lease.Device.Name != "p1" ||
		lease.Device.Address != "127.0.0.1:1" || lease.Device.Labels["model"] != "pixel" || lease.FencingToken < 1 {
		t.Fatalf("lease %+v", lease)
	}
	if loc := r.header.Get("Location"); loc != "/v1/leases/"+lease.ID.String() {
		t.Fatalf("Location %q", loc)
	}

	got := decode[Lease](t, expect(t, e.do("GET", "/v1/leases/"+lease.ID.String(), nil), http.StatusOK))
	if got.ID != lease.ID || !got.ExpiresAt.Equal(lease.ExpiresAt) {
		t.Fatalf("get lease %+v, want %+v", got, lease)
	}
	dev := decode[Device](t, expect(t, e.do("GET", "/v1/devices/p1", nil), http.StatusOK))
	if dev.State != "leased" || dev.LeaseID == nil || *dev.LeaseID != lease.ID || dev.FencingToken != lease.FencingToken {
		t.Fatalf("device after acquire %+v", dev)
	}

	// Malformed ids are a validation error, unknown ones not found.
	r = expect(t, e.do("GET", "/v1/leases/not-a-uuid", nil), http.StatusUnprocessableEntity)
	if !strings.Contains(string(r.body), "path.id") {
		t.Fatalf("malformed id not located: %s", r.body)
	}
	expect(t, e.do("GET", "/v1/leases/01936b2e-7f3a-7c1d-9b8e-2f4a5c6d7e8f", nil), http.StatusNotFound)
	expect(t, e.do("DELETE", "/v1/leases/01936b2e-7f3a-7c1d-9b8e-2f4a5c6d7e8f", nil), http.StatusNotFound)
	expect(t, e.do("POST", "/v1/leases/01936b2e-7f3a-7c1d-9b8e-2f4a5c6d7e8f/renew", nil), http.StatusNotFound)
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAcquireValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("v1", "", nil)

	for what, body := range map[string]any{
		"unknown field":    `{"pool":"default","urgency":1}`,
		"count zero":       map[string]any{"count": 0},
		"count over 64":    map[string]any{"count": 65},
		"priority over":    map[string]any{"priority": 101},
		"priority under":   map[string]any{"priority": -101},
		"ttl zero":         map[string]any{"ttl_seconds": 0},
		"ttl over max":     map[string]any{"ttl_seconds": 24*3600 + 1},
		"negative wait":    map[string]any{"wait_seconds": -1},
		"wait over max":    map[string]any{"wait_seconds": 15*60 + 1},
		"fractional wait":  map[string]any{"wait_seconds": 1.5},
		"bad pool":         map[string]any{"pool": "no spaces"},
		"empty pool":       map[string]any{"pool": ""},
		"bad label key":    map[string]any{"labels": map[string]string{"k=v": "x"}},
		"long holder":      map[string]any{"holder": strings.Repeat("h", 1025)},
		"wrong type":       map[string]any{"labels": []string{"a"}},
		"huge ttl":         `{"ttl_seconds": 1e30}`,
		"body is an array": `[]`,
	} {
		r := expect(t, e.do("POST", "/v1/leases", body), http.StatusUnprocessableEntity)
		t.Logf("%s: %s", what, r.body)
	}
	r := expect(t, e.do("POST", "/v1/leases", map[string]any{"ttl_seconds": 24*3600 + 1}), http.StatusUnprocessableEntity)
	if !strings.Contains(string(r.body), "body.ttl_seconds") || !strings.Contains(string(r.body), "86400") {
		t.Fatalf("ttl limit not explained: %s", r.body)
	}
	// None of that leased anything.
	dev := decode[Device](t, expect(t, e.do("GET", "/v1/devices/v1", nil), http.StatusOK))
	if dev.State != "idle" {
		t.Fatalf("device %+v after rejected acquires", dev)
	}

	// The limits themselves are accepted; an empty body takes the defaults.
	e.acquire(map[string]any{"ttl_seconds": 24 * 3600, "wait_seconds": 15 * 60})
	e.createDevice("v2", "", nil)
	lease := decode[Lease](t, expect(t, e.do("POST", "/v1/leases", nil), http.StatusCreated))
	if lease.Device.Name != "v2" || lease.ExpiresAt.Sub(lease.AcquiredAt) != 10*time.Minute {
		t.Fatalf("empty-body acquire: %+v", lease)
	}
}

func TestAcquireUnsatisfiable(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("u1", "android", map[string]string{"os": "android"})

	for _, body := range []map[string]any{
		{"pool": "ios"},
		{"pool": "android", "labels": map[string]string{"os": "ios"}, "wait_seconds": 30},
	} {
		start := time.Now()
		r := expect(t, e.do("POST", "/v1/leases", body), http.StatusUnprocessableEntity)
		if time.Since(start) > 5*time.Second {
			t.Fatalf("unsatisfiable acquire waited")
		}
		if typ := problemType(t, r); typ != problemTypePrefix+kindUnsatisfiable {
			t.Fatalf("type %q: %s", typ, r.body)
		}
		if !strings.Contains(string(r.body), body["pool"].(string)) {
			t.Fatalf("pool not named: %s", r.body)
		}
		t.Logf("%s", r.body)
	}
	r := expect(t, e.do("POST", "/v1/leases", map[string]any{"pool": "android", "labels": map[string]string{"os": "ios"}}), http.StatusUnprocessableEntity)
	if !strings.Contains(string(r.body), `os`) || !strings.Contains(string(r.body), `ios`) {
		t.Fatalf("labels not named: %s", r.body)
	}
}

func TestAcquireWaitTimesOut(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("w1", "", nil)
	e.acquire(nil)

	start := time.Now()
	r := expect(t, e.do("POST", "/v1/leases", map[string]any{"wait_seconds": 1}), http.StatusServiceUnavailable)
	if waited := time.Since(start); waited < 900*time.Millisecond {
		t.Fatalf("answered after %v, before the 1 s wait", waited)
	}
	ra, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 5 {
		t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
	}
	if typ := problemType(t, r); typ != problemTypePrefix+kindNoDevice {
		t.Fatalf("type %q", typ)
	}
}

func TestAcquireWokenByRelease(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("w1", "", nil)
	first := e.acquire(nil)

	done := make(chan response, 1)
	go func() { done <- e.do("POST", "/v1/leases", map[string]any{"wait_seconds": 20}) }()
	waitFor(t, "the acquire to wait", func() bool {
		pools := decode[PoolList](t, expect(t, e.do("GET", "/v1/pools", nil), http.StatusOK))
		return len(pools.Pools) == 1 && pools.Pools[0].Waiting == 1
	})
	start := time.Now()
	expect(t, e.do("DELETE", "/v1/leases/"+first.ID.String(), nil), http.StatusNoContent)
	r := expect(t, <-done, http.StatusCreated)
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("waiter woke %v after the release", took)
	}
	second := decode[Lease](t, r)
	if second.Device.Name != "w1" || second.ID == first.ID || second.FencingToken <= first.FencingToken {
		t.Fatalf("second lease %+v after %+v", second, first)
	}
}

// A client that gives up while waiting leaves nothing behind and is no
// server error (newEnv fails the test on any Error log).
func TestAcquireClientGoesAway(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("g1", "", nil)
	first := e.acquire(nil)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan response, 1)
	go func() { done <- e.doCtx(ctx, "POST", "/v1/leases", map[string]any{"wait_seconds": 30}) }()
	waitFor(t, "the acquire to wait", func() bool {
		pools := decode[PoolList](t, expect(t, e.do("GET", "/v1/pools", nil), http.StatusOK))
		return pools.Pools[0].Waiting == 1
	})
	cancel()
	if r := <-done; r.status != -1 {
		t.Fatalf("cancelled request got a response: %v", r)
	}
	waitFor(t, "the waiter to leave", func() bool {
		pools := decode[PoolList](t, expect(t, e.do("GET", "/v1/pools", nil), http.StatusOK))
		return pools.Pools[0].Waiting == 0
	})
	// Freeing the device now must not hand it to the departed client.
	expect(t, e.do("DELETE", "/v1/leases/"+first.ID.String(), nil), http.StatusNoContent)
	time.Sleep(300 * time.Millisecond)
	active := decode[LeaseList](t, expect(t, e.do("GET", "/v1/leases?active=true", nil), http.StatusOK))
	if len(active.Leases) != 0 {
		t.Fatalf("active leases after the client left: %+v", active.Leases)
	}
}

func TestRenewAndRelease(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("r1", "", nil)
	lease := e.acquire(map[string]any{"ttl_seconds": 60})
	path := "/v1/leases/" + lease.ID.String()

	renewed := decode[Lease](t, expect(t, e.do("POST", path+"/renew", map[string]any{"ttl_seconds": 3600}), http.StatusOK))
	if !renewed.ExpiresAt.After(lease.ExpiresAt.Add(3000 * time.Second)) {
		t.Fatalf("renew did not move expires_at: %v -> %v", lease.ExpiresAt, renewed.ExpiresAt)
	}
	mustUTC(t, "expires_at", renewed.ExpiresAt.Format(time.RFC3339Nano))
	// An empty body renews by the default TTL (10 minutes).
	renewed = decode[Lease](t, expect(t, e.do("POST", path+"/renew", nil), http.StatusOK))
	if d := time.Until(renewed.ExpiresAt); d < 9*time.Minute || d > 11*time.Minute {
		t.Fatalf("default renew left %v", d)
	}
	expect(t, e.do("POST", path+"/renew", `{}`), http.StatusOK)
	expect(t, e.do("POST", path+"/renew", `{"ttl":5}`), http.StatusUnprocessableEntity)
	expect(t, e.do("POST", path+"/renew", map[string]any{"ttl_seconds": 24*3600 + 1}), http.StatusUnprocessableEntity)

	expect(t, e.do("DELETE", path, nil), http.StatusNoContent)
	expect(t, e.do("DELETE", path, nil), http.StatusNoContent) // idempotent for its owner
	r := expect(t, e.do("POST", path+"/renew", nil), http.StatusGone)
	if typ := problemType(t, r); typ != problemTypePrefix+kindLeaseEnded || !strings.Contains(string(r.body), "released") {
		t.Fatalf("renew after release: %s", r.body)
	}
	ended := decode[Lease](t, expect(t, e.do("GET", path, nil), http.StatusOK))
	if ended.EndReason == nil || *ended.EndReason != "released" || ended.ReleasedAt == nil {
		t.Fatalf("released lease %+v", ended)
	}
	mustUTC(t, "released_at", ended.ReleasedAt.Format(time.RFC3339Nano))
	raw := decode[map[string]any](t, expect(t, e.do("GET", path, nil), http.StatusOK))
	mustUTC(t, "released_at", raw["released_at"].(string))
	dev := decode[Device](t, expect(t, e.do("GET", "/v1/devices/r1", nil), http.StatusOK))
	if dev.State != "idle" || dev.LeaseID != nil {
		t.Fatalf("device after release %+v", dev)
	}
}

func TestReleaseExpiredLease(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("x1", "", nil)
	lease := e.acquire(map[string]any{"ttl_seconds": 1})
	time.Sleep(1500 * time.Millisecond)

	path := "/v1/leases/" + lease.ID.String()
	r := expect(t, e.do("DELETE", path, nil), http.StatusGone)
	if !strings.Contains(string(r.body), "expired") {
		t.Fatalf("410 does not say expired: %s", r.body)
	}
	expect(t, e.do("POST", path+"/renew", nil), http.StatusGone)
	ended := decode[Lease](t, expect(t, e.do("GET", path, nil), http.StatusOK))
	if ended.EndReason == nil || *ended.EndReason != "expired" {
		t.Fatalf("expired lease %+v", ended)
	}
}

func TestListLeasesAndPools(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("a1", "android", nil)
	e.createDevice("a2", "android", nil)
	e.createDevice("a3", "android", nil)
	e.createDevice("b1", "boards", nil)
	e.createDevice("b2", "boards", nil)
	l1 := e.acquire(map[string]any{"pool": "android"})
	l2 := e.acquire(map[string]any{"pool": "boards"})
	expect(t, e.do("DELETE", "/v1/leases/"+l2.ID.String(), nil), http.StatusNoContent)
	l3 := e.acquire(map[string]any{"pool": "boards"})
	expect(t, e.do("PATCH", "/v1/devices/a3", map[string]any{"state": "maintenance"}), http.StatusOK)

	all := decode[LeaseList](t, expect(t, e.do("GET", "/v1/leases", nil), http.StatusOK))
	if len(all.Leases) != 3 {
		t.Fatalf("all leases: %+v", all.Leases)
	}
	active := decode[LeaseList](t, expect(t, e.do("GET", "/v1/leases?active=true", nil), http.StatusOK))
	ids := []string{}
	for _, l := range active.Leases {
		ids = append(ids, l.ID.String())
	}
	slices.Sort(ids)
	want := []string{l1.ID.String(), l3.ID.String()}
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Fatalf("active leases %v, want %v", ids, want)
	}
	boards := decode[LeaseList](t, expect(t, e.do("GET", "/v1/leases?active=true&pool=boards", nil), http.StatusOK))
	if len(boards.Leases) != 1 || boards.Leases[0].ID != l3.ID {
		t.Fatalf("active boards leases %+v", boards.Leases)
	}
	expect(t, e.do("GET", "/v1/leases?active=maybe", nil), http.StatusUnprocessableEntity)

	pools := decode[PoolList](t, expect(t, e.do("GET", "/v1/pools", nil), http.StatusOK))
	wantPools := []PoolSummary{
		{Name: "android", Idle: 1, Leased: 1, Maintenance: 1},
		{Name: "boards", Idle: 1, Leased: 1},
	}
	if !slices.Equal(pools.Pools, wantPools) {
		t.Fatalf("pools %+v, want %+v", pools.Pools, wantPools)
	}
	r := expect(t, e.do("GET", "/v1/pools", nil), http.StatusOK)
	if got := keysOf(t, mustJSON(t, decode[map[string][]any](t, r)["pools"][0])); !slices.Equal(got,
		[]string{"idle", "leased", "maintenance", "name", "offline", "oldest_wait_seconds", "waiting"}) {
		t.Fatalf("pool keys %v", got)
	}
}

// Huma bounds the body read with a 5 s connection read deadline. Had it
// stayed in place, net/http's background read would time out and cancel
// the context of any acquire still waiting 5 s later; net/http clears the
// deadline when the body is done. This guards that long waits survive.
func TestAcquireWaitOutlivesBodyReadTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("l1", "", nil)
	first := e.acquire(nil)

	done := make(chan response, 1)
	go func() { done <- e.do("POST", "/v1/leases", map[string]any{"wait_seconds": 20}) }()
	time.Sleep(6500 * time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("acquire ended before the device was freed: %v", r)
	default:
	}
	expect(t, e.do("DELETE", "/v1/leases/"+first.ID.String(), nil), http.StatusNoContent)
	expect(t, <-done, http.StatusCreated)
}
