package httpapi

import (
	"net/http"
	"testing"
)

// queueOf is the line as e's key sees it.
func (e *env) queueOf(query string) []QueueEntry {
	e.t.Helper()
	return decode[Queue](e.t, expect(e.t, e.do("GET", "/v1/queue"+query, nil), http.StatusOK)).Queue
}

// waitForQueue waits until e's key sees n entries in the line.
func (e *env) waitForQueue(n int) []QueueEntry {
	e.t.Helper()
	var q []QueueEntry
	waitFor(e.t, "the line", func() bool { q = e.queueOf(""); return len(q) == n })
	return q
}

func TestQueueShowsWaiters(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testKeys)
	e.waitReady()
	root, alice, bob := e.as("root"), e.as("alice"), e.as("bob")
	root.createDevice("q1", "lab", map[string]string{"os": "android"})
	root.createDevice("other", "farm", nil)
	held := root.acquire(map[string]any{"pool": "lab"})

	// One after the other, so the line's order is known.
	aliceDone := alice.acquireAsync(map[string]any{"pool": "lab", "wait_seconds": 20, "holder": "job-a"})
	root.waitForQueue(1)
	bobDone := bob.acquireAsync(map[string]any{"pool": "lab", "labels": map[string]string{"os": "android"}, "wait_seconds": 20})
	q := root.waitForQueue(2)
	if q[0].Owner != "alice" || q[0].Position != 1 || q[0].Holder != "job-a" || q[0].Pool != "lab" || q[0].Count != 1 || q[0].Priority != 0 ||
		q[1].Owner != "bob" || q[1].Position != 2 || q[1].Labels["os"] != "android" {
		t.Fatalf("line %+v", q)
	}
	if q[0].WaitedSeconds < 0 || q[0].EnqueuedAt.Location().String() != "UTC" || q[1].EnqueuedAt.Before(q[0].EnqueuedAt) {
		t.Fatalf("line times %+v", q)
	}
	if got := root.queueOf("?pool=farm"); len(got) != 0 {
		t.Fatalf("pool filter: %+v", got)
	}
	if got := root.queueOf("?limit=1"); len(got) != 1 || got[0].Owner != "alice" {
		t.Fatalf("limit 1: %+v", got)
	}

	// A client sees its own entries with their places in the whole line.
	if got := bob.queueOf("?pool=lab"); len(got) != 1 || got[0].Owner != "bob" || got[0].Position != 2 {
		t.Fatalf("bob's view %+v", got)
	}
	if got := alice.queueOf(""); len(got) != 1 || got[0].Owner != "alice" || got[0].Position != 1 {
		t.Fatalf("alice's view %+v", got)
	}

	// The freed device goes to the head of the line; bob moves up.
	expect(t, root.do("DELETE", "/v1/leases/"+held.ID.String(), nil), http.StatusNoContent)
	got := decode[Lease](t, expect(t, <-aliceDone, http.StatusCreated))
	if got.Owner != "alice" {
		t.Fatalf("the head of the line got %+v", got)
	}
	if q := root.waitForQueue(1); q[0].Owner != "bob" || q[0].Position != 1 {
		t.Fatalf("line after alice was served %+v", q)
	}
	expect(t, alice.do("DELETE", "/v1/leases/"+got.ID.String(), nil), http.StatusNoContent)
	expect(t, <-bobDone, http.StatusCreated)
	root.waitForQueue(0)
}

// A higher priority ranks ahead of those already waiting.
func TestQueueOrdersByPriority(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testKeys)
	e.waitReady()
	root, alice := e.as("root"), e.as("alice")
	root.createDevice("q1", "lab", nil)
	root.acquire(map[string]any{"pool": "lab"})

	alice.acquireAsync(map[string]any{"pool": "lab", "wait_seconds": 20})
	root.waitForQueue(1)
	root.acquireAsync(map[string]any{"pool": "lab", "wait_seconds": 20, "priority": 50})
	q := root.waitForQueue(2)
	if q[0].Owner != "root" || q[0].Priority != 50 || q[0].Position != 1 || q[1].Owner != "alice" || q[1].Position != 2 {
		t.Fatalf("line %+v", q)
	}
}
