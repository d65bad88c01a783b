package httpapi

import (
	"net/http"
	"testing"

	"github.com/danielgtaylor/huma/v2"
)

// testKeys stands in for API keys: X-Test-Key names the principal.
func testKeys(r *http.Request) (Principal, error) {
	switch key := r.Header.Get("X-Test-Key"); key {
	case "":
		return Principal{}, huma.ErrorWithHeaders(huma.Error401Unauthorized("missing key"),
			http.Header{"WWW-Authenticate": {"Bearer"}})
	case "root":
		return Principal{Name: key, Admin: true}, nil
	default:
		return Principal{Name: key}, nil
	}
}

func TestOwnership(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testKeys)
	root, alice, bob := e.as("root"), e.as("alice"), e.as("bob")

	// The authenticator's errors reach the client as problem+json; health
	// checks need no key.
	r := expect(t, e.do("GET", "/v1/pools", nil), http.StatusUnauthorized)
	if r.header.Get("WWW-Authenticate") != "Bearer" {
		t.Fatalf("WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
	}
	expect(t, e.do("GET", "/healthz", nil), http.StatusOK)

	// Clients read devices but do not change them.
	expect(t, alice.do("POST", "/v1/devices", map[string]any{"name": "c1", "address": "a:1"}), http.StatusForbidden)
	root.createDevice("c1", "", nil)
	root.createDevice("c2", "", nil)
	expect(t, alice.do("GET", "/v1/devices/c1", nil), http.StatusOK)
	expect(t, alice.do("PATCH", "/v1/devices/c1", map[string]any{"state": "maintenance"}), http.StatusForbidden)
	expect(t, alice.do("DELETE", "/v1/devices/c1", nil), http.StatusForbidden)

	lease := alice.acquire(nil)
	if lease.Owner != "alice" {
		t.Fatalf("owner %q", lease.Owner)
	}
	bobs := bob.acquire(nil)
	path := "/v1/leases/" + lease.ID.String()

	// Another client may not see or touch alice's lease.
	for _, req := range []struct{ method, path string }{
		{"GET", path}, {"POST", path + "/renew"}, {"DELETE", path},
	} {
		r := expect(t, bob.do(req.method, req.path, nil), http.StatusForbidden)
		if typ := problemType(t, r); typ != problemTypePrefix+kindNotYourLease {
			t.Fatalf("%s %s: type %q", req.method, req.path, typ)
		}
	}
	mine := decode[LeaseList](t, expect(t, bob.do("GET", "/v1/leases", nil), http.StatusOK))
	if len(mine.Leases) != 1 || mine.Leases[0].ID != bobs.ID {
		t.Fatalf("bob sees %+v", mine.Leases)
	}
	all := decode[LeaseList](t, expect(t, root.do("GET", "/v1/leases", nil), http.StatusOK))
	if len(all.Leases) != 2 {
		t.Fatalf("admin sees %+v", all.Leases)
	}

	// The owner renews; an admin's release of alice's lease is a revoke,
	// which alice then learns about as 410.
	expect(t, alice.do("POST", path+"/renew", nil), http.StatusOK)
	expect(t, root.do("DELETE", path, nil), http.StatusNoContent)
	expect(t, root.do("DELETE", path, nil), http.StatusNoContent)
	revoked := decode[Lease](t, expect(t, alice.do("GET", path, nil), http.StatusOK))
	if revoked.EndReason == nil || *revoked.EndReason != "revoked" {
		t.Fatalf("after admin release: %+v", revoked)
	}
	expect(t, alice.do("DELETE", path, nil), http.StatusGone)
	expect(t, alice.do("POST", path+"/renew", nil), http.StatusGone)
}

// Without an Authenticator every request is the anonymous admin.
func TestAnonymousDefault(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("n1", "", nil)
	if l := e.acquire(nil); l.Owner != Anonymous.Name {
		t.Fatalf("owner %q", l.Owner)
	}
}
