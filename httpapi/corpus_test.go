package httpapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"testing"
)

// Who a corpus row is sent as.
const (
	asNone    = "none" // no Authorization header
	asAdmin   = "admin"
	asClient1 = "client1"
	asClient2 = "client2"
	asRevoked = "revoked"
)

// badRequest is one row of TestBadRequestCorpus.
type badRequest struct {
	name         string
	method, path string // path may name {lease1}, {lease2}, {ended1}
	as           string // asAdmin etc.; asClient1 when empty
	header       http.Header
	body         string // sent verbatim with Content-Type application/json unless header says otherwise
	status       int
	kind         string // problem type after urn:devalloc:problem:, "" for about:blank
	contains     string // substring of the problem's detail or errors
	needHeader   string // a response header that must be set (WWW-Authenticate, Allow, Retry-After)
	// before, if set, runs after the first database snapshot and before
	// the request; it must leave the database as it is.
	before func(t *testing.T, f *corpusFixture)
}

// corpusCursor forges a list cursor the way the server encodes them.
func corpusCursor(v string) string { return base64.RawURLEncoding.EncodeToString([]byte(v)) }

// waitingClient2 starts an acquire of client2 that waits on fully leased
// pool alpha, and returns once it is in the waiter hub; it is cancelled at
// the end of the row. With MaxWaitingPerKey 1, client2 may wait for no more.
func waitingClient2(t *testing.T, f *corpusFixture) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequestWithContext(ctx, "POST", f.srv.URL+"/v1/leases", strings.NewReader(`{"pool":"alpha","wait_seconds":2}`))
		req.Header.Set("Authorization", f.client2)
		req.Header.Set("Content-Type", "application/json")
		if resp, err := f.client.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "client2 waiting", func() bool { return f.alloc.Hub().Waiting("alpha") == 1 })
}

// corpusObj renders a JSON object from alternating keys and values.
func corpusObj(kv ...any) string {
	m := map[string]any{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1]
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func corpusLabels(n int) map[string]string {
	l := make(map[string]string, n)
	for i := range n {
		l[fmt.Sprintf("k%02d", i)] = "v"
	}
	return l
}

// corpusDevice is a valid createDevice body with fields replaced or added by kv.
func corpusDevice(kv ...any) string {
	base := []any{"name", "dev-new", "pool", "gamma", "address", "127.0.0.1:1", "probe", "none"}
	return corpusObj(append(base, kv...)...)
}

const (
	randomLease = "01936b2e-7f3a-7c1d-9b8e-2f4a5c6d7e8f"
	sqlInject   = "'; DROP TABLE devalloc.devices; --"
)

// badRequestCorpus is every malformed or hostile request the API must turn
// away cleanly. Where either of two answers would do (400 versus 422 for
// JSON that does not parse), the row pins what the server does now.
var badRequestCorpus = []badRequest{
	// Broken JSON. Huma answers 400 for bodies that do not parse and 422
	// for bodies that parse but do not fit the schema; either is fine, the
	// rows pin it.
	{name: "json/truncated", method: "POST", path: "/v1/leases", body: `{"pool":"gam`, status: 400, contains: "unexpected end of JSON input"},
	{name: "json/trailing garbage", method: "POST", path: "/v1/leases", body: `{"pool":"gamma"} x`, status: 400},
	{name: "json/two objects", method: "POST", path: "/v1/leases", body: `{"pool":"gamma"}{"pool":"gamma"}`, status: 400},
	{name: "json/string not object", method: "POST", path: "/v1/leases", body: `"gamma"`, status: 422, contains: "expected object"},
	{name: "json/array not object", method: "POST", path: "/v1/leases", body: `[{"pool":"gamma"}]`, status: 422, contains: "expected object"},
	{name: "json/number not object", method: "POST", path: "/v1/leases", body: `42`, status: 422, contains: "expected object"},
	{name: "json/raw NUL in string", method: "POST", path: "/v1/leases", body: "{\"pool\":\"gam\x00ma\"}", status: 400},
	{name: "json/raw NUL after object", method: "POST", path: "/v1/leases", body: "{\"pool\":\"gamma\"}\x00", status: 400},
	{name: "json/byte order mark", method: "POST", path: "/v1/leases", body: "\xef\xbb\xbf{\"pool\":\"gamma\"}", status: 400},
	{name: "json/empty required body", method: "POST", path: "/v1/devices", as: asAdmin, header: http.Header{"Content-Type": {"application/json"}}, status: 400, contains: "request body is required"},
	{name: "json/null required body", method: "POST", path: "/v1/devices", as: asAdmin, body: `null`, status: 422, contains: "expected object"},
	{name: "json/unsupported content type", method: "POST", path: "/v1/devices", as: asAdmin, header: http.Header{"Content-Type": {"application/xml"}}, body: `<device name="x"/>`, status: 415},

	// Wrong types and out-of-range numbers.
	{name: "type/name is a number", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("name", 42), status: 422, contains: "body.name"},
	{name: "type/labels is an array", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("labels", []string{"os=android"}), status: 422, contains: "body.labels"},
	{name: "type/label value is a number", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "labels", map[string]any{"os": 1}), status: 422, contains: "body.labels.os"},
	{name: "type/label value is null", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "labels", map[string]any{"os": nil}), status: 422, contains: "body.labels.os"},
	{name: "type/label value is an object", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("labels", map[string]any{"os": map[string]string{"a": "b"}}), status: 422, contains: "body.labels.os"},
	{name: "type/holder is an object", method: "POST", path: "/v1/leases", body: `{"pool":"gamma","holder":{"job":1}}`, status: 422, contains: "body.holder"},
	{name: "wait/string", method: "POST", path: "/v1/leases", body: `{"pool":"gamma","wait_seconds":"5"}`, status: 422, contains: "body.wait_seconds"},
	{name: "wait/float", method: "POST", path: "/v1/leases", body: `{"pool":"gamma","wait_seconds":1.5}`, status: 422, contains: "body.wait_seconds"},
	{name: "wait/negative", method: "POST", path: "/v1/leases", body: `{"pool":"gamma","wait_seconds":-1}`, status: 422, contains: "body.wait_seconds"},
	{name: "wait/1e30", method: "POST", path: "/v1/leases", body: `{"pool":"gamma","wait_seconds":1e30}`, status: 422, contains: "body.wait_seconds"},
	{name: "wait/over max wait", method: "POST", path: "/v1/leases", body: `{"pool":"gamma","wait_seconds":3}`, status: 422, contains: "max wait"},
	{name: "ttl/zero", method: "POST", path: "/v1/leases", body: `{"pool":"gamma","ttl_seconds":0}`, status: 422, contains: "body.ttl_seconds"},
	{name: "ttl/negative", method: "POST", path: "/v1/leases", body: `{"pool":"gamma","ttl_seconds":-600}`, status: 422, contains: "body.ttl_seconds"},
	{name: "ttl/over max ttl", method: "POST", path: "/v1/leases", body: `{"pool":"gamma","ttl_seconds":86401}`, status: 422, contains: "max TTL"},
	{name: "ttl/max int64", method: "POST", path: "/v1/leases", body: `{"pool":"gamma","ttl_seconds":9223372036854775807}`, status: 422, contains: "body.ttl_seconds"},
	{name: "ttl/past int64", method: "POST", path: "/v1/leases", body: `{"pool":"gamma","ttl_seconds":9223372036854775808}`, status: 422, contains: "ttl_seconds"},
	{name: "renew/ttl string", method: "POST", path: "/v1/leases/{lease1}/renew", body: `{"ttl_seconds":"600"}`, status: 422, contains: "body.ttl_seconds"},
	{name: "renew/ttl zero", method: "POST", path: "/v1/leases/{lease1}/renew", body: `{"ttl_seconds":0}`, status: 422, contains: "body.ttl_seconds"},
	{name: "renew/ttl over max", method: "POST", path: "/v1/leases/{lease1}/renew", body: `{"ttl_seconds":86401}`, status: 422, contains: "max TTL"},

	// Sizes.
	{name: "size/body over 64 KiB", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "holder", strings.Repeat("x", 70<<10)), status: 413},
	{name: "size/device body over 64 KiB", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("address", strings.Repeat("x", 70<<10)), status: 413},
	{name: "size/name 10k characters", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("name", strings.Repeat("n", 10000)), status: 422, contains: "body.name"},
	{name: "size/holder 1025 characters", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "holder", strings.Repeat("h", 1025)), status: 422, contains: "body.holder"},
	{name: "size/label value 257 characters", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("labels", map[string]string{"os": strings.Repeat("v", 257)}), status: 422, contains: "body.labels.os"},
	{name: "size/label key 64 characters", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "labels", map[string]string{strings.Repeat("k", 64): "v"}), status: 422, contains: "label key must be"},
	{name: "size/33 labels", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("labels", corpusLabels(33)), status: 422, contains: "body.labels"},
	{name: "size/33 selector labels", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "labels", corpusLabels(33)), status: 422, contains: "body.labels"},
	{name: "size/address 1025 characters", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("address", strings.Repeat("a", 1025)), status: 422, contains: "body.address"},
	{name: "size/idempotency key 256 characters", method: "POST", path: "/v1/leases", header: http.Header{"Idempotency-Key": {strings.Repeat("i", 256)}}, body: `{"pool":"gamma"}`, status: 422, contains: "Idempotency-Key"},

	// Unknown and case-variant fields.
	{name: "field/unknown", method: "POST", path: "/v1/leases", body: `{"pool":"gamma","colour":"red"}`, status: 422, contains: "colour"},
	{name: "field/NAME instead of name", method: "POST", path: "/v1/devices", as: asAdmin, body: `{"NAME":"dev-new","address":"127.0.0.1:1","probe":"none"}`, status: 422, contains: "NAME"},
	{name: "field/name and NAME", method: "POST", path: "/v1/devices", as: asAdmin, body: `{"name":"dev-new","NAME":"Bad Name!","address":"127.0.0.1:1","probe":"none"}`, status: 422, contains: "NAME"},
	{name: "field/Wait_Seconds", method: "POST", path: "/v1/leases", body: `{"pool":"gamma","Wait_Seconds":1}`, status: 422, contains: "Wait_Seconds"},
	{name: "field/duplicate name, last one bad", method: "POST", path: "/v1/devices", as: asAdmin, body: `{"name":"dev-new","name":"bad name!","address":"127.0.0.1:1","probe":"none"}`, status: 422, contains: "body.name"},
	{name: "field/renew unknown", method: "POST", path: "/v1/leases/{lease1}/renew", body: `{"ttl":600}`, status: 422, contains: "ttl"},
	{name: "field/patch reason without state", method: "PATCH", path: "/v1/devices/dev-b1", as: asAdmin, body: `{"reason":"why not"}`, status: 422, contains: "body.reason"},
	{name: "field/patch state offline", method: "PATCH", path: "/v1/devices/dev-b1", as: asAdmin, body: `{"state":"offline"}`, status: 422, contains: "body.state"},
	{name: "field/patch probe icmp", method: "PATCH", path: "/v1/devices/dev-b1", as: asAdmin, body: `{"probe":"icmp"}`, status: 422, contains: "body.probe"},

	// SQL metacharacters: rejected by syntax, or taken literally.
	{name: "sql/device name", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("name", sqlInject), status: 422, contains: "body.name"},
	{name: "sql/acquire pool", method: "POST", path: "/v1/leases", body: corpusObj("pool", sqlInject), status: 422, contains: "body.pool"},
	{name: "sql/acquire pool %", method: "POST", path: "/v1/leases", body: `{"pool":"%"}`, status: 422, contains: "body.pool"},
	{name: "sql/acquire pool alph_ is literal", method: "POST", path: "/v1/leases", body: `{"pool":"alph_"}`, status: 422, kind: kindUnsatisfiable},
	{name: "sql/acquire label value % is literal", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "labels", map[string]string{"os": "%"}), status: 422, kind: kindUnsatisfiable},
	{name: "sql/label key quote", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "labels", map[string]string{"os' OR '1'='1": "x"}), status: 422, contains: "label key must be"},
	{name: "sql/label value injection is literal", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "labels", map[string]string{"os": `android"}' OR TRUE --`}), status: 422, kind: kindUnsatisfiable},
	{name: "sql/get device by injected name", method: "GET", path: "/v1/devices/%27%3B%20DROP%20TABLE%20devalloc.devices%3B%20--", status: 404, kind: kindNotFound},
	{name: "sql/delete dev_a1 is not a LIKE", method: "DELETE", path: "/v1/devices/dev_b1", as: asAdmin, status: 404, kind: kindNotFound},
	{name: "sql/delete dev-b% is not a LIKE", method: "DELETE", path: "/v1/devices/dev-b%25", as: asAdmin, status: 404, kind: kindNotFound},
	{name: "sql/patch dev-_1 is not a LIKE", method: "PATCH", path: "/v1/devices/dev-_1", as: asAdmin, body: `{"state":"maintenance"}`, status: 404, kind: kindNotFound},
	{name: "sql/state filter injection", method: "GET", path: "/v1/devices?state=idle%27%20OR%20%271%27%3D%271", status: 422, contains: "query.state"},

	// Control characters and odd Unicode.
	{name: "unicode/name RTL override", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("name", "dev\u202egnp.exe"), status: 422, contains: "body.name"},
	{name: "unicode/name zero-width joiner", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("name", "dev\u200dnew"), status: 422, contains: "body.name"},
	{name: "unicode/name emoji", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("name", "dev-📱"), status: 422, contains: "body.name"},
	{name: "unicode/name invalid UTF-8", method: "POST", path: "/v1/devices", as: asAdmin, body: `{"name":"dev-` + "\xff\xfe" + `","address":"127.0.0.1:1","probe":"none"}`, status: 400, contains: "UTF-8"},
	{name: "unicode/name newline", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("name", "dev\nnew"), status: 422, contains: "body.name"},
	{name: "unicode/name escaped NUL", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("name", "dev\x00new"), status: 422, contains: "body.name"},
	{name: "unicode/pool escaped NUL", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gam\x00ma"), status: 422, contains: "body.pool"},
	{name: "unicode/label key zero-width joiner", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("labels", map[string]string{"o\u200ds": "android"}), status: 422, contains: "label key must be"},
	{name: "unicode/label key emoji", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "labels", map[string]string{"📱": "x"}), status: 422, contains: "label key must be"},
	{name: "unicode/label key NUL", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "labels", map[string]string{"o\x00s": "android"}), status: 422, contains: "label key must be"},
	{name: "unicode/label key empty", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("labels", map[string]string{"": "x"}), status: 422, contains: "label key must be"},
	{name: "unicode/label key newline", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("labels", map[string]string{"os\n": "x"}), status: 422, contains: "label key must be"},
	{name: "unicode/selector value RTL is literal", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "labels", map[string]string{"os": "android\u202e"}), status: 422, kind: kindUnsatisfiable},
	{name: "unicode/selector value newline is literal", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "labels", map[string]string{"os": "android\n"}), status: 422, kind: kindUnsatisfiable},
	{name: "unicode/selector value invalid UTF-8", method: "POST", path: "/v1/leases", body: `{"pool":"gamma","labels":{"os":"android` + "\xff" + `"}}`, status: 400, contains: "UTF-8"},
	{
		name: "unicode/selector value NUL", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "labels", map[string]string{"os": "android\x00"}), status: 422, contains: "body.labels.os",
	},
	{
		name: "unicode/device label value NUL", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("labels", map[string]string{"os": "android\x00"}), status: 422, contains: "body.labels.os",
	},
	{
		name: "unicode/holder NUL", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "holder", "job\x00"), status: 422, contains: "body.holder",
	},
	{
		name: "unicode/address NUL", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("address", "127.0.0.1:1\x00"), status: 422, contains: "body.address",
	},
	{
		name: "unicode/patch reason NUL", method: "PATCH", path: "/v1/devices/dev-b1", as: asAdmin, body: corpusObj("state", "maintenance", "reason", "cracked\x00"), status: 422, contains: "body.reason",
	},
	{
		name: "unicode/idempotency key invalid UTF-8", method: "POST", path: "/v1/leases", header: http.Header{"Idempotency-Key": {"retry-\xff"}}, body: `{"pool":"gamma"}`, status: 422, contains: "Idempotency-Key",
	},
	{
		name: "unicode/device path NUL", method: "GET", path: "/v1/devices/dev%00", status: 404, kind: kindNotFound,
	},
	{
		name: "unicode/device path invalid UTF-8", method: "GET", path: "/v1/devices/dev%FF", status: 404, kind: kindNotFound,
	},
	{
		name: "unicode/pool filter NUL", method: "GET", path: "/v1/devices?pool=al%00pha", status: 422, contains: "query.pool",
	},
	{
		name: "unicode/lease pool filter invalid UTF-8", method: "GET", path: "/v1/leases?pool=%FF", status: 422, contains: "query.pool",
	},

	{
		name: "unicode/device label value invalid UTF-8", method: "POST", path: "/v1/devices", as: asAdmin, body: `{"name":"dev-utf8","pool":"zeta","address":"127.0.0.1:1","probe":"none","labels":{"os":"android` + "\xff" + `"}}`, status: 400, contains: "UTF-8",
	},

	// Authentication.
	{name: "auth/missing", method: "GET", path: "/v1/pools", as: asNone, status: 401, kind: kindUnauthorized, needHeader: "WWW-Authenticate"},
	{name: "auth/basic scheme", method: "GET", path: "/v1/pools", as: asNone, header: http.Header{"Authorization": {"Basic b3BzOnNlY3JldA=="}}, status: 401, kind: kindUnauthorized, needHeader: "WWW-Authenticate"},
	{name: "auth/bearer without token", method: "GET", path: "/v1/devices", as: asNone, header: http.Header{"Authorization": {"Bearer"}}, status: 401, kind: kindUnauthorized, needHeader: "WWW-Authenticate"},
	{name: "auth/unknown key", method: "GET", path: "/v1/leases", as: asNone, header: http.Header{"Authorization": {"Bearer dva_not-a-key"}}, status: 401, kind: kindUnauthorized, needHeader: "WWW-Authenticate"},
	{name: "auth/10k character key", method: "GET", path: "/v1/leases", as: asNone, header: http.Header{"Authorization": {"Bearer " + strings.Repeat("k", 10000)}}, status: 401, kind: kindUnauthorized},
	{name: "auth/sql in key", method: "GET", path: "/v1/leases", as: asNone, header: http.Header{"Authorization": {"Bearer " + sqlInject}}, status: 401, kind: kindUnauthorized},
	{name: "auth/invalid UTF-8 key", method: "GET", path: "/v1/leases", as: asNone, header: http.Header{"Authorization": {"Bearer dva_\xff\xfe"}}, status: 401, kind: kindUnauthorized},
	{name: "auth/lowercase scheme, unknown key", method: "GET", path: "/v1/leases", as: asNone, header: http.Header{"Authorization": {"bearer dva_unknown"}}, status: 401, kind: kindUnauthorized},
	{name: "auth/revoked key", method: "GET", path: "/v1/pools", as: asRevoked, status: 401, kind: kindUnauthorized, needHeader: "WWW-Authenticate"},
	{name: "auth/revoked key acquires", method: "POST", path: "/v1/leases", as: asRevoked, body: `{"pool":"gamma"}`, status: 401, kind: kindUnauthorized},
	{name: "auth/missing with broken body", method: "POST", path: "/v1/devices", as: asNone, body: `{"name":`, status: 401, kind: kindUnauthorized},
	{name: "auth/missing with huge body", method: "POST", path: "/v1/leases", as: asNone, body: corpusObj("holder", strings.Repeat("x", 70<<10)), status: 401, kind: kindUnauthorized},
	{name: "auth/missing on release", method: "DELETE", path: "/v1/leases/{lease1}", as: asNone, status: 401, kind: kindUnauthorized},

	// Roles and ownership.
	{name: "role/client creates device", method: "POST", path: "/v1/devices", body: corpusDevice(), status: 403, kind: kindForbidden},
	// Validation runs before the role check, so a client learns its body
	// is invalid before it learns it may not create devices at all. Pinned;
	// either order is defensible.
	{name: "role/client creates invalid device", method: "POST", path: "/v1/devices", body: corpusDevice("name", "bad name!"), status: 422, contains: "body.name"},
	{name: "role/client patches device", method: "PATCH", path: "/v1/devices/dev-b1", body: `{"state":"maintenance"}`, status: 403, kind: kindForbidden},
	{name: "role/client deletes device", method: "DELETE", path: "/v1/devices/dev-b1", status: 403, kind: kindForbidden},
	{name: "role/client force-deletes leased device", method: "DELETE", path: "/v1/devices/dev-a1?force=true", status: 403, kind: kindForbidden},
	{name: "role/client deletes missing device", method: "DELETE", path: "/v1/devices/no-such-device", status: 403, kind: kindForbidden},
	{name: "owner/get other's lease", method: "GET", path: "/v1/leases/{lease2}", status: 403, kind: kindNotYourLease},
	{name: "owner/renew other's lease", method: "POST", path: "/v1/leases/{lease2}/renew", body: `{"ttl_seconds":60}`, status: 403, kind: kindNotYourLease},
	{name: "owner/release other's lease", method: "DELETE", path: "/v1/leases/{lease1}", as: asClient2, status: 403, kind: kindNotYourLease},
	{name: "owner/release other's ended lease", method: "DELETE", path: "/v1/leases/{ended1}", as: asClient2, status: 403, kind: kindNotYourLease},

	// Lease ids.
	{name: "lease/get random id", method: "GET", path: "/v1/leases/" + randomLease, status: 404, kind: kindNotFound},
	{name: "lease/renew random id", method: "POST", path: "/v1/leases/" + randomLease + "/renew", status: 404, kind: kindNotFound},
	{name: "lease/release random id", method: "DELETE", path: "/v1/leases/" + randomLease, as: asAdmin, status: 404, kind: kindNotFound},
	{name: "lease/nil uuid", method: "GET", path: "/v1/leases/00000000-0000-0000-0000-000000000000", status: 404, kind: kindNotFound},
	{name: "lease/malformed id", method: "GET", path: "/v1/leases/not-a-uuid", status: 422, contains: "path.id"},
	{name: "lease/numeric id", method: "DELETE", path: "/v1/leases/1234", status: 422, contains: "path.id"},
	{name: "lease/uuid with suffix", method: "POST", path: "/v1/leases/" + randomLease + "x/renew", status: 422, contains: "path.id"},
	{name: "lease/sql id", method: "GET", path: "/v1/leases/%27%20OR%201%3D1%20--", status: 422, contains: "path.id"},
	{name: "lease/traversal id", method: "GET", path: "/v1/leases/..%2f..%2fpools", status: 422, contains: "path.id"},
	{name: "lease/renew ended", method: "POST", path: "/v1/leases/{ended1}/renew", status: 410, kind: kindLeaseEnded},

	// Methods and paths.
	{name: "route/PUT leases", method: "PUT", path: "/v1/leases", body: `{}`, status: 405, needHeader: "Allow"},
	{name: "route/PATCH lease", method: "PATCH", path: "/v1/leases/{lease1}", body: `{}`, status: 405, needHeader: "Allow"},
	{name: "route/GET renew", method: "GET", path: "/v1/leases/{lease1}/renew", status: 405, needHeader: "Allow"},
	{name: "route/POST pools", method: "POST", path: "/v1/pools", body: `{}`, status: 405, needHeader: "Allow"},
	{name: "route/DELETE devices collection", method: "DELETE", path: "/v1/devices", as: asAdmin, status: 405, needHeader: "Allow"},
	{name: "route/OPTIONS leases", method: "OPTIONS", path: "/v1/leases", status: 405, needHeader: "Allow"},
	{name: "route/TRACE devices", method: "TRACE", path: "/v1/devices", status: 405, needHeader: "Allow"},
	{name: "route/lowercase method", method: "delete", path: "/v1/leases/{lease1}", status: 405, needHeader: "Allow"},
	{name: "route/unknown path", method: "GET", path: "/v1/nope", status: 404, contains: "no such endpoint"},
	{name: "route/v2", method: "GET", path: "/v2/devices", status: 404, contains: "no such endpoint"},
	{name: "route/extra segment", method: "POST", path: "/v1/leases/{lease1}/renew/now", status: 404, contains: "no such endpoint"},
	{name: "route/traversal device name", method: "GET", path: "/v1/devices/..%2f..%2fetc%2fpasswd", status: 404, kind: kindNotFound},
	{name: "route/traversal delete", method: "DELETE", path: "/v1/devices/..%2fdev-b1", as: asAdmin, status: 404, kind: kindNotFound},
	{name: "route/dot-dot device", method: "GET", path: "/v1/devices/%2e%2e", status: 404, kind: kindNotFound},

	// Query parameters.
	{name: "query/active=maybe", method: "GET", path: "/v1/leases?active=maybe", status: 422, contains: "query.active"},
	{name: "query/state=bogus", method: "GET", path: "/v1/devices?state=bogus", status: 422, contains: "query.state"},
	{name: "query/force=yes", method: "DELETE", path: "/v1/devices/dev-a1?force=yes", as: asAdmin, status: 422, contains: "query.force"},

	// Pages.
	{name: "page/limit 0", method: "GET", path: "/v1/devices?limit=0", status: 422, contains: "query.limit"},
	{name: "page/limit negative", method: "GET", path: "/v1/leases?limit=-1", status: 422, contains: "query.limit"},
	{name: "page/limit not a number", method: "GET", path: "/v1/devices?limit=ten", status: 422, contains: "query.limit"},
	{name: "page/limit over max", method: "GET", path: "/v1/leases?limit=1001", status: 422, contains: "query.limit"},
	{name: "page/limit past int64", method: "GET", path: "/v1/devices?limit=99999999999999999999", status: 422, contains: "query.limit"},
	{name: "page/cursor not base64", method: "GET", path: "/v1/devices?cursor=%21%21%21", status: 422, contains: "query.cursor"},
	{name: "page/cursor padded base64", method: "GET", path: "/v1/devices?cursor=" + base64.URLEncoding.EncodeToString([]byte(`{"name":"dev-a1"}`)), status: 422, contains: "query.cursor"},
	{name: "page/cursor not JSON", method: "GET", path: "/v1/devices?cursor=" + corpusCursor("dev-a1"), status: 422, contains: "query.cursor"},
	{name: "page/lease cursor on devices", method: "GET", path: "/v1/devices?cursor=" + corpusCursor(`{"acquired_at_us":1,"id":"`+randomLease+`"}`), status: 422, contains: "query.cursor"},
	{name: "page/device cursor on leases", method: "GET", path: "/v1/leases?cursor=" + corpusCursor(`{"name":"dev-a1"}`), status: 422, contains: "query.cursor"},
	{name: "page/cursor trailing data", method: "GET", path: "/v1/devices?cursor=" + corpusCursor(`{"name":"dev-a1"} {}`), status: 422, contains: "query.cursor"},
	{name: "page/cursor empty name", method: "GET", path: "/v1/devices?cursor=" + corpusCursor(`{"name":""}`), status: 422, contains: "query.cursor"},
	{name: "page/cursor nil lease id", method: "GET", path: "/v1/leases?cursor=" + corpusCursor(`{"acquired_at_us":1,"id":"00000000-0000-0000-0000-000000000000"}`), status: 422, contains: "query.cursor"},
	{name: "page/cursor 513 characters", method: "GET", path: "/v1/leases?cursor=" + strings.Repeat("A", 513), status: 422, contains: "query.cursor"},
	{
		name: "page/cursor with NUL name", method: "GET", path: "/v1/devices?cursor=" + corpusCursor(`{"name":"dev\u0000"}`), status: 422, contains: "query.cursor",
	},
	{
		name: "page/cursor before 4713 BC", method: "GET", path: "/v1/leases?cursor=" + corpusCursor(`{"acquired_at_us":-300000000000000000,"id":"`+randomLease+`"}`), status: 422, contains: "query.cursor",
	},

	// Idempotency and the cap on waiting acquires.
	{name: "idempotency/key reused for another pool", method: "POST", path: "/v1/leases", header: http.Header{"Idempotency-Key": {"corpus-ended1"}}, body: `{"pool":"beta"}`, status: 422, kind: kindIdempotencyKeyReused},
	{name: "idempotency/key reused with other labels", method: "POST", path: "/v1/leases", header: http.Header{"Idempotency-Key": {"corpus-ended1"}}, body: `{"pool":"gamma","holder":"corpus","labels":{"tier":"cheap"}}`, status: 422, kind: kindIdempotencyKeyReused},
	{name: "waiting/over the cap", method: "POST", path: "/v1/leases", as: asClient2, body: `{"pool":"alpha","wait_seconds":1}`, status: 429, kind: kindTooManyWaiting, needHeader: "Retry-After", before: waitingClient2},

	// State conflicts and unsatisfiable or empty acquires.
	{name: "state/delete leased device", method: "DELETE", path: "/v1/devices/dev-a1", as: asAdmin, status: 409, kind: kindDeviceLeased},
	{name: "state/maintenance on leased device", method: "PATCH", path: "/v1/devices/dev-a1", as: asAdmin, body: `{"state":"maintenance"}`, status: 409, kind: kindDeviceLeased},
	{name: "state/duplicate device", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("name", "dev-b1"), status: 409, kind: kindDeviceExists},
	{name: "state/duplicate device other pool", method: "POST", path: "/v1/devices", as: asAdmin, body: corpusDevice("name", "dev-a1", "pool", "zeta"), status: 409, kind: kindDeviceExists},
	{name: "state/patch missing device", method: "PATCH", path: "/v1/devices/no-such-device", as: asAdmin, body: `{"state":"idle"}`, status: 404, kind: kindNotFound},
	{name: "acquire/pool fully leased", method: "POST", path: "/v1/leases", body: `{"pool":"alpha"}`, status: 503, kind: kindNoDevice, needHeader: "Retry-After"},
	{name: "acquire/unknown pool", method: "POST", path: "/v1/leases", body: `{"pool":"nope"}`, status: 422, kind: kindUnsatisfiable},
	{name: "acquire/labels of another pool", method: "POST", path: "/v1/leases", body: corpusObj("pool", "gamma", "labels", map[string]string{"os": "ios"}), status: 422, kind: kindUnsatisfiable},
	{name: "acquire/default pool is empty", method: "POST", path: "/v1/leases", status: 422, kind: kindUnsatisfiable},
}

// TestBadRequestCorpus sends every row of badRequestCorpus to a server with
// real bearer auth and checks that each is turned away with the right
// problem+json, that nothing in the database changed, and that nothing was
// logged as a server fault.
func TestBadRequestCorpus(t *testing.T) {
	t.Parallel()
	f := newCorpusFixture(t)
	keys := map[string]string{
		"": f.client1, asClient1: f.client1, asClient2: f.client2,
		asAdmin: f.admin, asRevoked: f.revoked, asNone: "",
	}
	ids := strings.NewReplacer(
		"{lease1}", f.lease1.ID.String(), "{lease2}", f.lease2.ID.String(), "{ended1}", f.ended1.ID.String())
	seen := map[string]bool{}
	for _, row := range badRequestCorpus {
		if seen[row.name] {
			t.Fatalf("duplicate corpus row %q", row.name)
		}
		seen[row.name] = true
		t.Run(row.name, func(t *testing.T) {
			key, ok := keys[row.as]
			if !ok {
				t.Fatalf("unknown identity %q", row.as)
			}
			before := f.snapshot(t)
			if row.before != nil {
				row.before(t, f)
			}
			logged := len(f.logs.errors())
			resp := f.do(t, row.method, ids.Replace(row.path), key, row.header, row.body)
			after := f.snapshot(t)
			t.Logf("%s %s -> %d %.300s", row.method, row.path, resp.status, resp.body)

			var problems []string
			fail := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
			checkCorpusResponse(row, resp, fail)
			if !maps.Equal(before, after) {
				fail("the database changed: %v -> %v", before, after)
			}
			if errs := f.logs.errors()[logged:]; len(errs) > 0 {
				fail("logged at Error: %q", errs)
			}
			if len(problems) > 0 {
				t.Errorf("%s %s:\n  %s\n  response: %d %s %.500s", row.method, row.path,
					strings.Join(problems, "\n  "), resp.status, resp.header.Get("Content-Type"), resp.body)
			}
		})
	}
	if n := len(badRequestCorpus); n < 40 {
		t.Errorf("the corpus has %d rows, want at least 40", n)
	}
}

// checkCorpusResponse reports through fail every way resp is not what row
// wants.
func checkCorpusResponse(row badRequest, resp response, fail func(string, ...any)) {
	if resp.status != row.status {
		fail("status %d, want %d", resp.status, row.status)
	}
	if ct := resp.header.Get("Content-Type"); ct != "application/problem+json" {
		fail("Content-Type %q, want application/problem+json", ct)
	}
	if row.needHeader != "" && resp.header.Get(row.needHeader) == "" {
		fail("no %s header", row.needHeader)
	}
	var p struct {
		Type   string `json:"type"`
		Title  string `json:"title"`
		Status int    `json:"status"`
		Detail string `json:"detail"`
		Errors []struct {
			Message  string `json:"message"`
			Location string `json:"location"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(resp.body, &p); err != nil {
		fail("body is not JSON: %v", err)
		return
	}
	if p.Status != resp.status {
		fail("problem status %d, HTTP status %d", p.Status, resp.status)
	}
	if p.Title == "" {
		fail("problem without a title")
	}
	if p.Detail == "" {
		fail("problem without a detail")
	}
	wantType := ""
	if row.kind != "" {
		wantType = problemTypePrefix + row.kind
	}
	if p.Type != wantType && (wantType != "" || p.Type != "about:blank") {
		fail("type %q, want %q", p.Type, wantType)
	}
	for _, e := range p.Errors {
		if e.Message == "" {
			fail("an error entry without a message")
		}
	}
	if row.contains != "" && !strings.Contains(string(resp.body), row.contains) {
		fail("body does not mention %q", row.contains)
	}
	if strings.Contains(string(resp.body), "SQLSTATE") {
		fail("the body leaks database details")
	}
}
