package db

import (
	"encoding/json"
	"errors"
	"maps"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/devalloc/devalloc/db/dbtest"
	"github.com/devalloc/devalloc/db/devalloctype"
	"github.com/devalloc/devalloc/db/wake"
)

// FuzzSelector checks the Go side of label matching against PostgreSQL's,
// for arbitrary pools, label keys and values:
//   - Labels encode/decode round-trips;
//   - Selector.Key() is equal exactly for equal selectors, whatever order
//     the labels were inserted in;
//   - Labels.Contains (the hub's matching) agrees with jsonb @> (the pick
//     query's matching), both ways;
//   - the hub wakes a waiter for an idle device exactly when they match;
//   - parseIdlePayload reads what the NOTIFY trigger sends back to the same
//     pool and labels, and never panics on anything else.
//
// The API only lets valid UTF-8 through (JSON decoding replaces invalid
// bytes), so the exact checks apply to valid UTF-8; invalid UTF-8 only has
// to round-trip to something decodable. Strings with NUL cannot be stored
// by PostgreSQL at all (jsonb has no \u0000): for those the database
// checks only confirm PostgreSQL refuses them.
func FuzzSelector(f *testing.F) {
	type seed struct {
		pool, k1, v1, k2, v2, k3, v3 string
		mask                         uint8
		payload                      string
	}
	for _, s := range []seed{
		{"android", "os", "android", "model", "pixel-7", "os", "android", 0b001, `{"pool":"android","device":1,"labels":{"os":"android"}}`},
		{"android", "os", "android", "model", "pixel-7", "tier", "cheap", 0b111, `{"pool":"android","device":7}`},
		{"default", "", "", "", "", "", "", 0, `{}`},
		{"p", "a", "1", "b", "2", "c", "3", 0b01011, `{"pool":"p","labels":{"a":"1","b":2}}`},
		{"p", "k", "v", "k", "w", "k", "x", 0b110, `{"pool":"p","labels":null}`},
		{"p", "os", "Android", "os", "android", "OS", "android", 0b101, `not json`},
		{"p\x00{}", "a", "", "", "a", "\x00", "", 0b11, "{\"pool\":\"p\\u0000{}\"}"},
		{"p", "k", "v\x00", "k2", "v", "k3", "v", 0b010, `{"pool":"p","labels":{"k":"v\u0000"}}`},
		{"pool", "\u202e", "\u200d", "📱", "é", "e\u0301", "é", 0b1111, `{"pool":"pool","labels":{"📱":"é"}}`},
		{"pool", "a", "\xff", "b", "\xfe", "\xff", "a", 0b111, "\xff\xfe"},
		{"'; DROP TABLE devalloc.devices; --", "%", "_", "a%", "b_", "\\", "\"", 0b10111, `{"pool":"%","labels":{"%":"_"}}`},
		{"p", "a", strings.Repeat("v", 300), "b", "", "c", "\n\t\r", 0b1101, `[1,2,3]`},
		{"", "k", "v", "k", "v", "k", "v", 0b11111, `{"pool":"","labels":{"k":"v"}}`},
		{"p", "a", "1", "b", "2", "c", "3", 0b100000, `{"pool":"p","labels":{"a":"1"},"pool":"q"}`},
		{"p", "x", "1", "y", "1", "z", "1", 0b011000, `{"pool":1}`},
		{"p", "a", "b", "b", "a", "ab", "", 0b110110, `{"Pool":"p","LABELS":{"a":"b"}}`},
	} {
		f.Add(s.pool, s.k1, s.v1, s.k2, s.v2, s.k3, s.v3, s.mask, s.payload)
	}
	pool, _ := dbtest.NewPool(f)

	f.Fuzz(func(t *testing.T, poolName, k1, v1, k2, v2, k3, v3 string, mask uint8, payload string) {
		// Never panics, whatever the payload.
		ev := wake.ParseIdlePayload(payload)
		if !json.Valid([]byte(payload)) && (ev.Pool != payload || ev.LabelsKnown) {
			t.Fatalf("payload %q is not JSON but parsed as %+v", payload, ev)
		}

		// A: the device's labels, from up to three pairs (a repeated key
		// keeps its first value). B: the selector, a subset of A picked by
		// mask, with one value changed (bit 3) or an extra label (bit 4).
		type pair struct{ k, v string }
		var pairs []pair
		for _, p := range []pair{{k1, v1}, {k2, v2}, {k3, v3}} {
			dup := false
			for _, q := range pairs {
				dup = dup || q.k == p.k
			}
			if !dup {
				pairs = append(pairs, p)
			}
		}
		a := Labels{}
		for _, p := range pairs {
			a[p.k] = p.v
		}
		b := Labels{}
		for i, p := range pairs {
			if mask&(1<<i) != 0 {
				b[p.k] = p.v
			}
		}
		if mask&(1<<3) != 0 && len(pairs) > 0 {
			b[pairs[0].k] = pairs[0].v + "\x01"
		}
		if mask&(1<<4) != 0 {
			b[k1+"\x02"] = v1
		}
		valid := utf8.ValidString(poolName)
		for k, v := range a {
			valid = valid && utf8.ValidString(k) && utf8.ValidString(v)
		}
		for k, v := range b {
			valid = valid && utf8.ValidString(k) && utf8.ValidString(v)
		}

		// Round trip.
		for _, l := range []Labels{a, b} {
			back, err := devalloctype.DecodeLabels(l.JSON())
			if err != nil {
				t.Fatalf("decode(encode(%q)): %v", l, err)
			}
			if valid && !maps.Equal(back, l) {
				t.Fatalf("decode(encode(%q)) = %q", l, back)
			}
		}
		if back, err := devalloctype.DecodeLabels(Labels(nil).JSON()); err != nil || len(back) != 0 || back == nil {
			t.Fatalf("nil labels round-trip to %#v, %v", back, err)
		}

		// Insertion order does not matter; equal selectors have equal keys.
		for _, perm := range [][]int{{0, 1, 2}, {2, 1, 0}, {1, 2, 0}, {0, 2, 1}} {
			l := Labels{}
			for _, i := range perm {
				if i < len(pairs) {
					l[pairs[i].k] = pairs[i].v
				}
			}
			if got, want := (Selector{Pool: poolName, Labels: l}).Key(), (Selector{Pool: poolName, Labels: a}).Key(); got != want {
				t.Fatalf("order %v: key %q, want %q", perm, got, want)
			}
		}
		if valid {
			// key is injective: two selectors share one exactly when they
			// are equal, also across pools (k3 as a second pool name).
			sa, sb, sc := Selector{Pool: poolName, Labels: a}, Selector{Pool: poolName, Labels: b}, Selector{Pool: k3, Labels: b}
			if (sa.Key() == sb.Key()) != maps.Equal(a, b) {
				t.Fatalf("keys of %q and %q: %q vs %q", a, b, sa.Key(), sb.Key())
			}
			if (sa.Key() == sc.Key()) != (poolName == k3 && maps.Equal(a, b)) {
				t.Fatalf("keys of %+v and %+v: %q vs %q", sa, sc, sa.Key(), sc.Key())
			}
		}

		// The hub wakes a waiter for (pool, b) when a device of that pool
		// with labels a becomes idle exactly when a contains b.
		h := wake.NewHub()
		w := h.Join(Selector{Pool: poolName, Labels: b})
		woken := h.Notify(wake.IdleEvent{Pool: poolName, Labels: a, LabelsKnown: true})
		w.Leave()
		if (woken == 1) != a.Contains(b) {
			t.Fatalf("device %q, selector %q: woke %d, Contains %v", a, b, woken, a.Contains(b))
		}
		if len(h.WaitingSelectors()) != 0 {
			t.Fatalf("hub keeps pools after the waiter left: %v", h.WaitingSelectors())
		}

		if !valid {
			return
		}
		// PostgreSQL agrees with Contains, both ways.
		var ab, ba bool
		err := pool.QueryRow(t.Context(), `SELECT $1::jsonb @> $2::jsonb, $2::jsonb @> $1::jsonb`,
			string(a.JSON()), string(b.JSON())).Scan(&ab, &ba)
		if hasNUL(a) || hasNUL(b) {
			if !isSQLState(err, "22P05") {
				t.Fatalf("labels with NUL %q / %q: want PostgreSQL to refuse them (22P05), got %v", a, b, err)
			}
		} else {
			if err != nil {
				t.Fatalf("jsonb of %q / %q: %v", a, b, err)
			}
			if ab != a.Contains(b) || ba != b.Contains(a) {
				t.Fatalf("%q @> %q: PostgreSQL %v/%v, Contains %v/%v", a, b, ab, ba, a.Contains(b), b.Contains(a))
			}
		}

		// What the NOTIFY trigger sends (devalloc.notify_idle builds the
		// payload with this expression) parses back to the same event.
		var notified string
		err = pool.QueryRow(t.Context(), `SELECT json_build_object('pool', $1::text, 'device', 1, 'labels', $2::jsonb)::text`,
			poolName, string(a.JSON())).Scan(&notified)
		switch {
		case strings.ContainsRune(poolName, 0):
			if !isSQLState(err, "22021") {
				t.Fatalf("pool with NUL %q: want PostgreSQL to refuse it (22021), got %v", poolName, err)
			}
		case hasNUL(a):
			if !isSQLState(err, "22P05") {
				t.Fatalf("labels with NUL %q: want PostgreSQL to refuse them (22P05), got %v", a, err)
			}
		case err != nil:
			t.Fatalf("payload for %q %q: %v", poolName, a, err)
		default:
			ev := wake.ParseIdlePayload(notified)
			if ev.Pool != poolName || !ev.LabelsKnown || !maps.Equal(ev.Labels, a) {
				t.Fatalf("payload %s parsed as %+v, want pool %q labels %q", notified, ev, poolName, a)
			}
		}
	})
}

func hasNUL(l Labels) bool {
	for k, v := range l {
		if strings.ContainsRune(k, 0) || strings.ContainsRune(v, 0) {
			return true
		}
	}
	return false
}

func isSQLState(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}
