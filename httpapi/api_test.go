package httpapi

import (
	"encoding/json"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
)

var wantOperations = []string{
	"acquireLease", "createDevice", "deleteDevice", "getDevice", "getLease", "getLeaseGroup", "getQueue", "healthz",
	"listDevices", "listLeases", "listPools", "readyz", "releaseLease", "releaseLeaseGroup", "renewLease",
	"renewLeaseGroup", "updateDevice",
}

func TestHealth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	// The listener connects in the background just after Start.
	waitFor(t, "readiness", func() bool { return e.do("GET", "/readyz", nil).status == http.StatusOK })
	for _, path := range []string{"/healthz", "/readyz"} {
		r := expect(t, e.do("GET", path, nil), http.StatusOK)
		if s := decode[HealthStatus](t, r); s.Status != "ok" {
			t.Fatalf("%s: %s", path, r.body)
		}
	}
	// A stopped allocator has no listener: not ready.
	e.alloc.Stop()
	r := expect(t, e.do("GET", "/readyz", nil), http.StatusServiceUnavailable)
	if typ := problemType(t, r); typ != problemTypePrefix+kindNotReady {
		t.Fatalf("type %q", typ)
	}
	expect(t, e.do("GET", "/healthz", nil), http.StatusOK)
}

func TestOpenAPIServed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	for path, version := range map[string]string{"/openapi.json": "3.1", "/openapi-3.0.json": "3.0"} {
		r := expect(t, e.do("GET", path, nil), http.StatusOK)
		served := decode[map[string]any](t, r)
		wantVersion := map[string]string{"3.1": "3.1.0", "3.0": "3.0.3"}[version]
		if served["openapi"] != wantVersion {
			t.Fatalf("%s: openapi %v", path, served["openapi"])
		}
		if got := operationIDs(t, served); !slices.Equal(got, wantOperations) {
			t.Fatalf("%s: operations %v, want %v", path, got, wantOperations)
		}
		// OpenAPI() renders the same document without a database.
		b, err := OpenAPI(version)
		if err != nil {
			t.Fatal(err)
		}
		var rendered map[string]any
		if err := json.Unmarshal(b, &rendered); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(rendered, served) {
			t.Fatalf("OpenAPI(%q) differs from %s", version, path)
		}
	}
	expect(t, e.do("GET", "/docs", nil), http.StatusOK)
	if _, err := OpenAPI("2.0"); err == nil {
		t.Fatal("OpenAPI(2.0) did not fail")
	}
}

func operationIDs(t *testing.T, spec map[string]any) []string {
	t.Helper()
	var ids []string
	paths, _ := spec["paths"].(map[string]any)
	for _, item := range paths {
		for _, op := range item.(map[string]any) {
			if id, ok := op.(map[string]any)["operationId"].(string); ok {
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	return ids
}

// Unknown routes and methods answer problem+json like everything else.
func TestFallbackProblems(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	expect(t, e.do("GET", "/v1/nothing", nil), http.StatusNotFound)
	r := expect(t, e.do("PUT", "/v1/devices", nil), http.StatusMethodNotAllowed)
	if r.header.Get("Allow") == "" {
		t.Fatalf("405 without Allow")
	}
	r = expect(t, e.do("POST", "/v1/devices", "{}", "Content-Type", "application/json"), http.StatusUnprocessableEntity)
	t.Logf("%s", r.body)
	big := `{"name":"big","address":"` + strings.Repeat("a", DefaultMaxBodyBytes) + `"}`
	expect(t, e.do("POST", "/v1/devices", big), http.StatusRequestEntityTooLarge)
}
