package httpapi

import (
	"net/http"
	"strings"
	"testing"
)

func TestClientPriorityBound(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testKeys)
	e.waitReady()
	root, alice := e.as("root"), e.as("alice")
	root.createDevice("p1", "lab", nil)
	held := root.acquire(map[string]any{"pool": "lab"})

	// Refused before anything happens: no place in the line (it would have
	// waited), no lease.
	r := expect(t, alice.do("POST", "/v1/leases", map[string]any{"pool": "lab", "priority": 50, "wait_seconds": 30}), http.StatusForbidden)
	if typ := problemType(t, r); typ != problemTypePrefix+kindPriorityTooHigh ||
		!strings.Contains(string(r.body), "priority 50 is above 10") || !strings.Contains(string(r.body), "admin key") {
		t.Fatalf("priority over the client bound: %s", r.body)
	}
	if n := e.count(`SELECT count(*) FROM devalloc.waiters`); n != 0 {
		t.Fatalf("%d waiters after a refused priority", n)
	}
	if n := e.count(`SELECT count(*) FROM devalloc.leases WHERE owner = 'alice'`); n != 0 {
		t.Fatalf("%d leases of alice after a refused priority", n)
	}

	// The bound itself, and any lower priority, are a client's to use;
	// an admin may go up to 100.
	expect(t, root.do("DELETE", "/v1/leases/"+held.ID.String(), nil), http.StatusNoContent)
	mine := alice.acquire(map[string]any{"pool": "lab", "priority": 10})
	expect(t, alice.do("DELETE", "/v1/leases/"+mine.ID.String(), nil), http.StatusNoContent)
	mine = alice.acquire(map[string]any{"pool": "lab", "priority": -100})
	expect(t, alice.do("DELETE", "/v1/leases/"+mine.ID.String(), nil), http.StatusNoContent)
	root.acquire(map[string]any{"pool": "lab", "priority": 50})
	expect(t, root.do("POST", "/v1/leases", map[string]any{"pool": "lab", "priority": 101}), http.StatusUnprocessableEntity)
}

func TestClientPriorityBoundConfigured(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, Options{Authenticate: testKeys, MaxClientPriority: 3})
	e.as("root").createDevice("p1", "lab", nil)
	alice := e.as("alice")
	r := expect(t, alice.do("POST", "/v1/leases", map[string]any{"pool": "lab", "priority": 4}), http.StatusForbidden)
	if !strings.Contains(string(r.body), "priority 4 is above 3") {
		t.Fatalf("configured bound: %s", r.body)
	}
	alice.acquire(map[string]any{"pool": "lab", "priority": 3})
}

func TestClientPriorityCap(t *testing.T) {
	t.Parallel()
	for in, want := range map[int]int{0: DefaultMaxClientPriority, -1: 0, -50: 0, 1: 1, 100: 100} {
		if got := clientPriorityCap(in); got != want {
			t.Errorf("clientPriorityCap(%d) = %d, want %d", in, got, want)
		}
	}
}
