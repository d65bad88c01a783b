package httpapi

import (
	"net/http"
	"slices"
	"strings"
	"testing"
)

func TestCreateDevice(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)

	r := expect(t, e.do("POST", "/v1/devices", map[string]any{"name": "pixel-1", "address": "10.0.0.1:5555"}), http.StatusCreated)
	wantKeys := []string{"address", "created_at", "drain", "fencing_token", "labels", "last_probe_at", "lease_id",
		"name", "pool", "probe", "state", "state_reason", "updated_at"}
	if got := keysOf(t, r.body); !slices.Equal(got, wantKeys) {
		t.Fatalf("device keys %v, want %v", got, wantKeys)
	}
	raw := decode[map[string]any](t, r)
	if raw["lease_id"] != nil || raw["last_probe_at"] != nil {
		t.Fatalf("lease_id and last_probe_at should be null: %s", r.body)
	}
	if labels, ok := raw["labels"].(map[string]any); !ok || len(labels) != 0 {
		t.Fatalf("labels should be {}: %s", r.body)
	}
	mustUTC(t, "created_at", raw["created_at"].(string))
	mustUTC(t, "updated_at", raw["updated_at"].(string))
	dev := decode[Device](t, r)
	if dev.Pool != "default" || dev.Probe != "tcp" || dev.State != "idle" {
		t.Fatalf("defaults not applied: %+v", dev)
	}
	if loc := r.header.Get("Location"); loc != "/v1/devices/pixel-1" {
		t.Fatalf("Location %q", loc)
	}

	r = expect(t, e.do("POST", "/v1/devices", map[string]any{"name": "pixel-1", "address": "10.0.0.2:5555"}), http.StatusConflict)
	if typ := problemType(t, r); typ != problemTypePrefix+kindDeviceExists {
		t.Fatalf("duplicate: type %q", typ)
	}

	bad := map[string]any{
		"leading hyphen":   map[string]any{"name": "-bad", "address": "a:1"},
		"space in name":    map[string]any{"name": "a b", "address": "a:1"},
		"long name":        map[string]any{"name": strings.Repeat("a", 129), "address": "a:1"},
		"empty name":       map[string]any{"name": "", "address": "a:1"},
		"missing address":  map[string]any{"name": "ok"},
		"empty address":    map[string]any{"name": "ok", "address": ""},
		"bad probe":        map[string]any{"name": "ok", "address": "a:1", "probe": "icmp"},
		"bad pool":         map[string]any{"name": "ok", "address": "a:1", "pool": "a/b"},
		"unknown field":    map[string]any{"name": "ok", "address": "a:1", "owner": "me"},
		"bad label key":    map[string]any{"name": "ok", "address": "a:1", "labels": map[string]any{"bad key": "x"}},
		"long label key":   map[string]any{"name": "ok", "address": "a:1", "labels": map[string]any{strings.Repeat("k", 64): "x"}},
		"long label value": map[string]any{"name": "ok", "address": "a:1", "labels": map[string]any{"k": strings.Repeat("v", 257)}},
		"non-string label": map[string]any{"name": "ok", "address": "a:1", "labels": map[string]any{"k": 1}},
		"too many labels":  map[string]any{"name": "ok", "address": "a:1", "labels": manyLabels(33)},
	}
	for what, body := range bad {
		r := expect(t, e.do("POST", "/v1/devices", body), http.StatusUnprocessableEntity)
		t.Logf("%s: %s", what, r.body)
	}
	// Unknown fields are named in the problem.
	r = expect(t, e.do("POST", "/v1/devices", `{"name":"ok","address":"a:1","bogus":true}`), http.StatusUnprocessableEntity)
	if !strings.Contains(string(r.body), "body.bogus") {
		t.Fatalf("unknown field not located: %s", r.body)
	}
	expect(t, e.do("POST", "/v1/devices", `{"name":`), http.StatusBadRequest)
	// Member names are exact: a case variant would otherwise slip past
	// validation and be decoded over the validated member.
	for _, body := range []string{
		`{"name":"ok","NAME":"Bad Name!","address":"a:1"}`,
		`{"Name":"ok","address":"a:1"}`,
	} {
		r := expect(t, e.do("POST", "/v1/devices", body), http.StatusUnprocessableEntity)
		t.Logf("%s: %s", body, r.body)
	}

	// The limits themselves are fine, and none of the bad requests left a device.
	e.createDevice("b."+strings.Repeat("x", 126), "", manyLabels(32))
	list := decode[DeviceList](t, expect(t, e.do("GET", "/v1/devices", nil), http.StatusOK))
	if len(list.Devices) != 2 {
		t.Fatalf("want 2 devices after the bad requests, got %+v", list.Devices)
	}
}

func manyLabels(n int) map[string]string {
	l := map[string]string{}
	for i := range n {
		l["k"+strings.Repeat("x", i)] = strings.Repeat("v", 256)
	}
	return l
}

func TestListGetPatchDevices(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("a1", "android", map[string]string{"model": "pixel"})
	e.createDevice("a2", "android", nil)
	e.createDevice("b1", "boards", nil)

	list := decode[DeviceList](t, expect(t, e.do("GET", "/v1/devices?pool=android", nil), http.StatusOK))
	if len(list.Devices) != 2 || list.Devices[0].Name != "a1" || list.Devices[1].Name != "a2" {
		t.Fatalf("pool filter: %+v", list.Devices)
	}
	expect(t, e.do("GET", "/v1/devices?state=bogus", nil), http.StatusUnprocessableEntity)
	r := expect(t, e.do("GET", "/v1/devices?pool=nope", nil), http.StatusOK)
	if strings.TrimSpace(string(r.body)) != `{"devices":[]}` {
		t.Fatalf("empty list: %s", r.body)
	}

	dev := decode[Device](t, expect(t, e.do("GET", "/v1/devices/a1", nil), http.StatusOK))
	if dev.Labels["model"] != "pixel" || dev.Pool != "android" {
		t.Fatalf("get: %+v", dev)
	}
	r = expect(t, e.do("GET", "/v1/devices/nope", nil), http.StatusNotFound)
	if typ := problemType(t, r); typ != problemTypePrefix+kindNotFound {
		t.Fatalf("type %q", typ)
	}

	// Patch spec fields.
	dev = decode[Device](t, expect(t, e.do("PATCH", "/v1/devices/a1",
		map[string]any{"labels": map[string]string{"model": "pixel-8"}, "address": "10.0.0.9:5555", "probe": "http"}), http.StatusOK))
	if dev.Labels["model"] != "pixel-8" || dev.Address != "10.0.0.9:5555" || dev.Probe != "http" {
		t.Fatalf("patch: %+v", dev)
	}
	for what, body := range map[string]any{
		"unknown field":        map[string]any{"name": "x"},
		"leased state":         map[string]any{"state": "leased"},
		"offline state":        map[string]any{"state": "offline"},
		"reason without state": map[string]any{"reason": "why"},
		"bad probe":            map[string]any{"probe": "icmp"},
		"bad label key":        map[string]any{"labels": map[string]string{"a b": "c"}},
	} {
		r := expect(t, e.do("PATCH", "/v1/devices/a1", body), http.StatusUnprocessableEntity)
		t.Logf("%s: %s", what, r.body)
	}
	expect(t, e.do("PATCH", "/v1/devices/nope", map[string]any{"state": "maintenance"}), http.StatusNotFound)

	// Maintenance takes a device out of rotation; idle puts it back.
	dev = decode[Device](t, expect(t, e.do("PATCH", "/v1/devices/b1",
		map[string]any{"state": "maintenance", "reason": "reflashing"}), http.StatusOK))
	if dev.State != "maintenance" || dev.StateReason != "reflashing" {
		t.Fatalf("maintenance: %+v", dev)
	}
	r = expect(t, e.do("POST", "/v1/leases", map[string]any{"pool": "boards"}), http.StatusServiceUnavailable)
	if r.header.Get("Retry-After") == "" {
		t.Fatalf("no Retry-After on 503")
	}
	expect(t, e.do("PATCH", "/v1/devices/b1", map[string]any{"state": "idle"}), http.StatusOK)
	lease := e.acquire(map[string]any{"pool": "boards"})
	if lease.Device.Name != "b1" {
		t.Fatalf("acquired %+v", lease.Device)
	}

	// A leased device's state cannot change, and a refused patch changes nothing.
	r = expect(t, e.do("PATCH", "/v1/devices/b1",
		map[string]any{"state": "maintenance", "address": "10.9.9.9:1"}), http.StatusConflict)
	if typ := problemType(t, r); typ != problemTypePrefix+kindDeviceLeased {
		t.Fatalf("type %q", typ)
	}
	dev = decode[Device](t, expect(t, e.do("GET", "/v1/devices/b1", nil), http.StatusOK))
	if dev.State != "leased" || dev.Address == "10.9.9.9:1" || dev.LeaseID == nil || *dev.LeaseID != lease.ID {
		t.Fatalf("after refused patch: %+v", dev)
	}
	list = decode[DeviceList](t, expect(t, e.do("GET", "/v1/devices?state=leased", nil), http.StatusOK))
	if len(list.Devices) != 1 || list.Devices[0].Name != "b1" {
		t.Fatalf("state filter: %+v", list.Devices)
	}
}

func TestDeleteDevice(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("d1", "", nil)
	e.createDevice("d2", "", nil)

	expect(t, e.do("DELETE", "/v1/devices/d1", nil), http.StatusNoContent)
	expect(t, e.do("GET", "/v1/devices/d1", nil), http.StatusNotFound)
	expect(t, e.do("DELETE", "/v1/devices/d1", nil), http.StatusNotFound)

	lease := e.acquire(nil)
	r := expect(t, e.do("DELETE", "/v1/devices/d2", nil), http.StatusConflict)
	if typ := problemType(t, r); typ != problemTypePrefix+kindDeviceLeased {
		t.Fatalf("type %q", typ)
	}
	expect(t, e.do("GET", "/v1/devices/d2", nil), http.StatusOK)
	expect(t, e.do("DELETE", "/v1/devices/d2?force=true", nil), http.StatusNoContent)
	expect(t, e.do("GET", "/v1/devices/d2", nil), http.StatusNotFound)

	ended := decode[Lease](t, expect(t, e.do("GET", "/v1/leases/"+lease.ID.String(), nil), http.StatusOK))
	if ended.EndReason == nil || *ended.EndReason != "device_removed" || ended.ReleasedAt == nil {
		t.Fatalf("lease after forced delete: %+v", ended)
	}
	r = expect(t, e.do("DELETE", "/v1/leases/"+lease.ID.String(), nil), http.StatusGone)
	if typ := problemType(t, r); typ != problemTypePrefix+kindLeaseEnded {
		t.Fatalf("type %q", typ)
	}
}

// PATCH drain: a leased device keeps its holder and says it is draining;
// state and drain together are refused and change nothing.
func TestDrainThroughTheAPI(t *testing.T) {
	e := newEnv(t, nil)
	e.createDevice("d1", "lab", nil)
	e.acquire(map[string]any{"pool": "lab"})
	r := expect(t, e.do("PATCH", "/v1/devices/d1", map[string]any{"state": "maintenance", "drain": true}), http.StatusUnprocessableEntity)
	if !strings.Contains(r.String(), "body.drain") {
		t.Fatalf("state with drain: %s", r)
	}
	d := decode[Device](t, expect(t, e.do("PATCH", "/v1/devices/d1", map[string]any{"drain": true, "reason": "firmware"}), http.StatusOK))
	if d.State != "leased" || !d.Drain {
		t.Fatalf("drained leased device: %+v", d)
	}
	expect(t, e.do("PATCH", "/v1/devices/d1", map[string]any{"state": "maintenance"}), http.StatusConflict)
}
