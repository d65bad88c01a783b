package httpapi

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// groupAcquire acquires count devices of pool as one group.
func (e *env) groupAcquire(pool string, count int, extra map[string]any) Lease {
	e.t.Helper()
	body := map[string]any{"pool": pool, "count": count}
	for k, v := range extra {
		body[k] = v
	}
	return e.acquire(body)
}

// deviceStates maps the devices of pool to their states.
func (e *env) deviceStates(pool string) map[string]string {
	e.t.Helper()
	list := decode[DeviceList](e.t, expect(e.t, e.do("GET", "/v1/devices?pool="+pool, nil), http.StatusOK))
	out := map[string]string{}
	for _, d := range list.Devices {
		out[d.Name] = d.State
	}
	return out
}

func countState(states map[string]string, state string) int {
	n := 0
	for _, s := range states {
		if s == state {
			n++
		}
	}
	return n
}

func TestGroupAcquireAndRelease(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testKeys)
	e.waitReady()
	root, alice, bob := e.as("root"), e.as("alice"), e.as("bob")
	for _, name := range []string{"g1", "g2", "g3"} {
		root.createDevice(name, "lab", nil)
	}

	first := alice.groupAcquire("lab", 2, map[string]any{"holder": "job-9"})
	if len(first.Group) != 2 || first.GroupID == nil {
		t.Fatalf("group acquire answered %+v", first)
	}
	gid := *first.GroupID
	if first.Group[0].ID != first.ID {
		t.Fatalf("the answer is not the group's first lease: %s, group %+v", first.ID, first.Group)
	}
	for _, l := range first.Group {
		if l.GroupID == nil || *l.GroupID != gid || l.Owner != "alice" || l.Holder != "job-9" || len(l.Group) != 0 {
			t.Fatalf("group lease %+v", l)
		}
	}
	if first.Group[0].Device.Name == first.Group[1].Device.Name {
		t.Fatalf("one device twice: %+v", first.Group)
	}
	states := root.deviceStates("lab")
	if states[first.Group[0].Device.Name] != "leased" || states[first.Group[1].Device.Name] != "leased" || countState(states, "idle") != 1 {
		t.Fatalf("devices after a group of 2: %v", states)
	}

	path := "/v1/lease-groups/" + gid.String()
	group := decode[LeaseGroup](t, expect(t, alice.do("GET", path, nil), http.StatusOK))
	if group.ID != gid || len(group.Leases) != 2 || group.Leases[0].ID != first.Group[0].ID || group.Leases[1].ID != first.Group[1].ID {
		t.Fatalf("GET group %+v, want the acquire's %+v", group, first.Group)
	}
	expect(t, root.do("GET", path, nil), http.StatusOK)
	r := expect(t, bob.do("GET", path, nil), http.StatusForbidden)
	if typ := problemType(t, r); typ != problemTypePrefix+kindNotYourLease {
		t.Fatalf("bob reading alice's group: %s", r.body)
	}
	expect(t, bob.do("DELETE", path, nil), http.StatusForbidden)
	expect(t, bob.do("POST", path+"/renew", nil), http.StatusForbidden)

	// One call frees both devices; again is fine for the owner.
	expect(t, alice.do("DELETE", path, nil), http.StatusNoContent)
	if got := root.deviceStates("lab"); countState(got, "idle") != 3 {
		t.Fatalf("devices after releasing the group: %v", got)
	}
	expect(t, alice.do("DELETE", path, nil), http.StatusNoContent)
	group = decode[LeaseGroup](t, expect(t, alice.do("GET", path, nil), http.StatusOK))
	for _, l := range group.Leases {
		if l.EndReason == nil || *l.EndReason != "released" || l.ReleasedAt == nil {
			t.Fatalf("released group lease %+v", l)
		}
	}
	r = expect(t, alice.do("POST", path+"/renew", nil), http.StatusGone)
	if !strings.Contains(string(r.body), "released") {
		t.Fatalf("renew of a released group: %s", r.body)
	}

	unknown := "/v1/lease-groups/01936b2e-7f3a-7c1d-9b8e-2f4a5c6d7e8f"
	expect(t, alice.do("GET", unknown, nil), http.StatusNotFound)
	expect(t, alice.do("DELETE", unknown, nil), http.StatusNotFound)
	expect(t, alice.do("POST", unknown+"/renew", nil), http.StatusNotFound)
	expect(t, alice.do("GET", "/v1/lease-groups/not-a-uuid", nil), http.StatusUnprocessableEntity)
}

// More devices than could ever fit is refused at once, leasing nothing.
func TestGroupAcquireUnsatisfiable(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("u1", "lab", map[string]string{"os": "android"})
	e.createDevice("u2", "lab", map[string]string{"os": "android"})
	e.createDevice("u3", "lab", map[string]string{"os": "ios"})

	r := expect(t, e.do("POST", "/v1/leases",
		map[string]any{"pool": "lab", "labels": map[string]string{"os": "android"}, "count": 3, "wait_seconds": 30}),
		http.StatusUnprocessableEntity)
	if typ := problemType(t, r); typ != problemTypePrefix+kindUnsatisfiable || !strings.Contains(string(r.body), "fewer than 3") {
		t.Fatalf("type %q: %s", typ, r.body)
	}
	if got := e.deviceStates("lab"); countState(got, "idle") != 3 {
		t.Fatalf("devices after a refused group: %v", got)
	}
	if n := e.count(`SELECT count(*) FROM devalloc.leases`); n != 0 {
		t.Fatalf("%d leases after a refused group", n)
	}
}

func TestRenewLeaseGroup(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testKeys)
	e.waitReady()
	root, alice := e.as("root"), e.as("alice")
	root.createDevice("r1", "lab", nil)
	root.createDevice("r2", "lab", nil)
	first := alice.groupAcquire("lab", 2, map[string]any{"ttl_seconds": 60})
	path := "/v1/lease-groups/" + first.GroupID.String()

	renewed := decode[LeaseGroup](t, expect(t, alice.do("POST", path+"/renew", map[string]any{"ttl_seconds": 3600}), http.StatusOK))
	if len(renewed.Leases) != 2 {
		t.Fatalf("renewed group %+v", renewed)
	}
	for i, l := range renewed.Leases {
		if !l.ExpiresAt.After(first.Group[i].ExpiresAt.Add(3000 * time.Second)) {
			t.Fatalf("renew did not move expires_at of %s: %v -> %v", l.ID, first.Group[i].ExpiresAt, l.ExpiresAt)
		}
	}
	expect(t, alice.do("POST", path+"/renew", map[string]any{"ttl_seconds": 24*3600 + 1}), http.StatusUnprocessableEntity)

	// An admin ending it revokes it; its owner then learns so (410), as
	// for a single lease.
	expect(t, root.do("DELETE", path, nil), http.StatusNoContent)
	for _, what := range []string{"DELETE", "POST"} {
		p := path
		if what == "POST" {
			p += "/renew"
		}
		r := expect(t, alice.do(what, p, nil), http.StatusGone)
		if typ := problemType(t, r); typ != problemTypePrefix+kindLeaseEnded || !strings.Contains(string(r.body), "revoked") {
			t.Fatalf("%s after a revoke: %s", what, r.body)
		}
	}
}

// A group that does not fit now waits in the line, all or nothing: one
// free device is not handed over, two are.
func TestGroupAcquireWaits(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testKeys)
	e.waitReady()
	root, alice := e.as("root"), e.as("alice")
	root.createDevice("w1", "lab", nil)
	root.createDevice("w2", "lab", nil)
	held := root.acquire(map[string]any{"pool": "lab"})

	done := alice.acquireAsync(map[string]any{"pool": "lab", "count": 2, "wait_seconds": 20})
	if q := root.waitForQueue(1); q[0].Owner != "alice" || q[0].Count != 2 || q[0].Position != 1 {
		t.Fatalf("line %+v", q)
	}
	if states := root.deviceStates("lab"); countState(states, "idle") != 1 {
		t.Fatalf("a group took part of what it asked for: %v", states)
	}
	expect(t, root.do("DELETE", "/v1/leases/"+held.ID.String(), nil), http.StatusNoContent)
	got := decode[Lease](t, expect(t, <-done, http.StatusCreated))
	if len(got.Group) != 2 || got.GroupID == nil || got.Owner != "alice" {
		t.Fatalf("waiting group got %+v", got)
	}
	if states := root.deviceStates("lab"); countState(states, "leased") != 2 {
		t.Fatalf("devices after the group was served: %v", states)
	}
}
