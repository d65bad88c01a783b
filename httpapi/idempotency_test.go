package httpapi

import (
	"context"
	"net/http"
	"testing"
)

// acquireKeyed sends an acquire with an Idempotency-Key.
func (e *env) acquireKeyed(key string, body map[string]any) response {
	e.t.Helper()
	return e.do("POST", "/v1/leases", body, "Idempotency-Key", key)
}

func TestIdempotentAcquireReplays(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testKeys)
	root, alice, bob := e.as("root"), e.as("alice"), e.as("bob")
	root.createDevice("i1", "lab", nil)
	root.createDevice("i2", "lab", nil)
	root.createDevice("i3", "lab", nil)
	body := map[string]any{"pool": "lab", "ttl_seconds": 120, "holder": "job-1"}

	first := expect(t, alice.acquireKeyed("k-1", body), http.StatusCreated)
	if h := first.header.Get("Idempotent-Replayed"); h != "" {
		t.Fatalf("first answer has Idempotent-Replayed %q", h)
	}
	lease := decode[Lease](t, first)

	// The retry, also with another wait: the same lease, the same status.
	retryBody := map[string]any{"pool": "lab", "ttl_seconds": 120, "holder": "job-1", "wait_seconds": 30}
	again := expect(t, alice.acquireKeyed("k-1", retryBody), http.StatusCreated)
	if got := decode[Lease](t, again); got.ID != lease.ID || got.FencingToken != lease.FencingToken {
		t.Fatalf("retry got %+v, want lease %s", got, lease.ID)
	}
	if again.header.Get("Idempotent-Replayed") != "true" || again.header.Get("Location") != first.header.Get("Location") {
		t.Fatalf("retry headers %v", again.header)
	}

	// The same key with a different request changes nothing.
	for what, b := range map[string]map[string]any{
		"holder": {"pool": "lab", "ttl_seconds": 120, "holder": "job-2"},
		"ttl":    {"pool": "lab", "ttl_seconds": 60, "holder": "job-1"},
		"labels": {"pool": "lab", "ttl_seconds": 120, "holder": "job-1", "labels": map[string]string{"a": "b"}},
	} {
		r := expect(t, alice.acquireKeyed("k-1", b), http.StatusUnprocessableEntity)
		if typ := problemType(t, r); typ != problemTypePrefix+kindIdempotencyKeyReused {
			t.Fatalf("different %s: type %q: %s", what, typ, r.body)
		}
	}
	active := decode[LeaseList](t, expect(t, root.do("GET", "/v1/leases?active=true", nil), http.StatusOK))
	if len(active.Leases) != 1 || active.Leases[0].ID != lease.ID {
		t.Fatalf("active leases after the refused retries: %+v", active.Leases)
	}

	// Keys are per API key: bob's k-1 is his own.
	bobs := decode[Lease](t, expect(t, bob.acquireKeyed("k-1", body), http.StatusCreated))
	if bobs.ID == lease.ID || bobs.Owner != "bob" {
		t.Fatalf("bob got %+v", bobs)
	}

	// A retry after the lease ended gets it as it is now.
	expect(t, alice.do("DELETE", "/v1/leases/"+lease.ID.String(), nil), http.StatusNoContent)
	ended := decode[Lease](t, expect(t, alice.acquireKeyed("k-1", body), http.StatusCreated))
	if ended.ID != lease.ID || ended.EndReason == nil || *ended.EndReason != "released" {
		t.Fatalf("retry after release got %+v", ended)
	}
	devs := decode[DeviceList](t, expect(t, root.do("GET", "/v1/devices?state=leased", nil), http.StatusOK))
	if len(devs.Devices) != 1 {
		t.Fatalf("leased devices %+v, want bob's only", devs.Devices)
	}
}

// The client of a waiting acquire goes away and retries; the retry gets the
// device once it is freed, and only one lease is taken.
func TestIdempotentRetryAfterClientGone(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("w1", "", nil)
	held := e.acquire(nil)
	body := map[string]any{"wait_seconds": 30, "holder": "job-7"}

	ctx, cancel := context.WithCancel(t.Context())
	gone := make(chan response, 1)
	go func() { gone <- e.doCtx(ctx, "POST", "/v1/leases", body, "Idempotency-Key", "job-7") }()
	waitForWaiting(t, e, 1)
	// A second, concurrent retry joins the same acquire.
	joined := make(chan response, 1)
	go func() { joined <- e.acquireKeyed("job-7", body) }()
	cancel()
	<-gone
	retried := make(chan response, 1)
	go func() { retried <- e.acquireKeyed("job-7", body) }()

	expect(t, e.do("DELETE", "/v1/leases/"+held.ID.String(), nil), http.StatusNoContent)
	l1 := decode[Lease](t, expect(t, <-joined, http.StatusCreated))
	l2 := decode[Lease](t, expect(t, <-retried, http.StatusCreated))
	if l1.ID != l2.ID || l1.Holder != "job-7" {
		t.Fatalf("retries got %s and %s", l1.ID, l2.ID)
	}
	active := decode[LeaseList](t, expect(t, e.do("GET", "/v1/leases?active=true", nil), http.StatusOK))
	if len(active.Leases) != 1 || active.Leases[0].ID != l1.ID {
		t.Fatalf("active leases %+v, want the one", active.Leases)
	}
}

// waitForWaiting waits until the pools report n waiting acquires in all.
func waitForWaiting(t *testing.T, e *env, n int64) {
	t.Helper()
	waitFor(t, "waiting acquires", func() bool {
		pools := decode[PoolList](t, expect(t, e.do("GET", "/v1/pools", nil), http.StatusOK))
		var sum int64
		for _, p := range pools.Pools {
			sum += p.Waiting
		}
		return sum == n
	})
}
