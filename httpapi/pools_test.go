package httpapi

import (
	"net/http"
	"testing"
)

// poolSummary returns the summary of pool name.
func (e *env) poolSummary(name string) PoolSummary {
	e.t.Helper()
	for _, p := range decode[PoolList](e.t, expect(e.t, e.do("GET", "/v1/pools", nil), http.StatusOK)).Pools {
		if p.Name == name {
			return p
		}
	}
	e.t.Fatalf("no pool %q", name)
	return PoolSummary{}
}

func TestPoolsShowTheLine(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.waitReady()
	e.createDevice("o1", "lab", nil)
	held := e.acquire(map[string]any{"pool": "lab"})
	if p := e.poolSummary("lab"); p.Waiting != 0 || p.OldestWaitSeconds != 0 {
		t.Fatalf("pool with nobody waiting %+v", p)
	}

	done := e.acquireAsync(map[string]any{"pool": "lab", "wait_seconds": 20})
	waitFor(t, "a waiter with a wait", func() bool {
		p := e.poolSummary("lab")
		return p.Waiting == 1 && p.OldestWaitSeconds > 0
	})
	expect(t, e.do("DELETE", "/v1/leases/"+held.ID.String(), nil), http.StatusNoContent)
	expect(t, <-done, http.StatusCreated)
	if p := e.poolSummary("lab"); p.Waiting != 0 || p.OldestWaitSeconds != 0 {
		t.Fatalf("pool after the waiter was served %+v", p)
	}
}
