package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
)

func TestTooManyWaitingPerKey(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, Options{Authenticate: testKeys, MaxWaitingPerKey: 2})
	root, alice, bob := e.as("root"), e.as("alice"), e.as("bob")
	root.createDevice("t1", "", nil)
	root.acquire(nil)
	wait := map[string]any{"wait_seconds": 60}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ended := make(chan response, 3)
	for _, c := range []*env{alice, alice, bob} {
		go func() { ended <- c.doCtx(ctx, "POST", "/v1/leases", wait) }()
	}
	waitForWaiting(t, root, 3)

	// Alice is at her cap: refused at once, with a hint when to retry.
	r := expect(t, alice.do("POST", "/v1/leases", wait), http.StatusTooManyRequests)
	if typ := problemType(t, r); typ != problemTypePrefix+kindTooManyWaiting {
		t.Fatalf("type %q: %s", typ, r.body)
	}
	if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 {
		t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
	}
	// An acquire that does not wait is not capped, nor is another key.
	expect(t, alice.do("POST", "/v1/leases", nil), http.StatusServiceUnavailable)
	bobCtx, bobCancel := context.WithCancel(t.Context())
	go func() { ended <- bob.doCtx(bobCtx, "POST", "/v1/leases", wait) }()
	waitForWaiting(t, root, 4)
	bobCancel()

	// Once her acquires end, alice may wait again.
	cancel()
	for range 4 {
		<-ended
	}
	waitFor(t, "alice's places to free up", func() bool {
		return alice.do("POST", "/v1/leases", map[string]any{"wait_seconds": 1}).status == http.StatusServiceUnavailable
	})
}

func TestWaitLimiterCounts(t *testing.T) {
	l := newWaitLimiter(0)
	if l.max != DefaultMaxWaitingPerKey {
		t.Fatalf("default max %d", l.max)
	}
	l = newWaitLimiter(2)
	d1, ok1 := l.enter("a")
	d2, ok2 := l.enter("a")
	if _, ok := l.enter("a"); !ok1 || !ok2 || ok {
		t.Fatalf("third place granted, or one of the first two refused")
	}
	if _, ok := l.enter("b"); !ok {
		t.Fatal("another key refused")
	}
	d1()
	if d3, ok := l.enter("a"); !ok {
		t.Fatal("freed place not reusable")
	} else {
		d3()
	}
	d2()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.waiting["a"] != 0 || len(l.waiting) != 1 {
		t.Fatalf("counts left: %v", l.waiting)
	}
}

// The 429 and its Retry-After are in the spec, like the 503's.
func TestAcquireErrorsDocumented(t *testing.T) {
	b, err := OpenAPI("3.1")
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		Paths map[string]map[string]struct {
			Responses map[string]struct {
				Headers map[string]any `json:"headers"`
			} `json:"responses"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	responses := spec.Paths["/v1/leases"]["post"].Responses
	for _, status := range []string{"422", "429", "503"} {
		if _, ok := responses[status]; !ok {
			t.Fatalf("acquire does not document %s", status)
		}
	}
	for _, status := range []string{"429", "503"} {
		if _, ok := responses[status].Headers["Retry-After"]; !ok {
			t.Fatalf("acquire's %s does not document Retry-After", status)
		}
	}
}
