package httpapi

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/devalloc/devalloc/db"
)

// pageAll follows next_cursor from path (which has its filters and limit)
// to the end and returns every item's id in order, and the page count.
func pageAll[T any](t *testing.T, e *env, path string, items func(T) ([]string, *string)) ([]string, int) {
	t.Helper()
	var all []string
	pages := 0
	next := ""
	for {
		p := path
		if next != "" {
			p += "&cursor=" + url.QueryEscape(next)
		}
		page := decode[T](t, expect(t, e.do("GET", p, nil), http.StatusOK))
		pages++
		ids, cursor := items(page)
		all = append(all, ids...)
		if cursor == nil {
			return all, pages
		}
		if *cursor == "" || pages > 100 {
			t.Fatalf("bad next_cursor %q after %d pages", *cursor, pages)
		}
		next = *cursor
	}
}

func deviceNames(l DeviceList) ([]string, *string) {
	var names []string
	for _, d := range l.Devices {
		names = append(names, d.Name)
	}
	return names, l.NextCursor
}

func leaseIDs(l LeaseList) ([]string, *string) {
	var ids []string
	for _, x := range l.Leases {
		ids = append(ids, x.ID.String())
	}
	return ids, l.NextCursor
}

func TestListDevicesPaginates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var all, lab, maint []string
	for i := range 250 {
		name := fmt.Sprintf("dev-%03d", i)
		pool := []string{"lab", "farm"}[i%2]
		if _, err := e.alloc.CreateDevice(t.Context(), db.DeviceSpec{Name: name, Pool: pool, Address: "h:1", Probe: "none"}); err != nil {
			t.Fatal(err)
		}
		all = append(all, name)
		if pool == "lab" {
			lab = append(lab, name)
		}
		if i%3 == 0 {
			expect(t, e.do("PATCH", "/v1/devices/"+name, map[string]any{"state": "maintenance"}), http.StatusOK)
			maint = append(maint, name)
		}
	}
	for _, tc := range []struct {
		path  string
		want  []string
		pages int
	}{
		{"/v1/devices?limit=100", all, 3},
		{"/v1/devices?", all, 3}, // default limit 100
		{"/v1/devices?limit=1000", all, 1},
		{"/v1/devices?limit=50", all, 5},
		{"/v1/devices?pool=lab&limit=100", lab, 2},
		{"/v1/devices?state=maintenance&limit=30", maint, 3},
		{"/v1/devices?pool=nope&limit=10", nil, 1},
	} {
		got, pages := pageAll(t, e, tc.path, deviceNames)
		if !slices.Equal(got, tc.want) || pages != tc.pages {
			t.Fatalf("%s: %d devices in %d pages, want %d in %d", tc.path, len(got), pages, len(tc.want), tc.pages)
		}
	}

	// The last page has no next_cursor member at all.
	r := expect(t, e.do("GET", "/v1/devices?limit=1000", nil), http.StatusOK)
	if got := keysOf(t, r.body); !slices.Equal(got, []string{"devices"}) {
		t.Fatalf("last page members %v", got)
	}
	r = expect(t, e.do("GET", "/v1/devices?limit=1", nil), http.StatusOK)
	if got := keysOf(t, r.body); !slices.Equal(got, []string{"devices", "next_cursor"}) {
		t.Fatalf("first page members %v", got)
	}
}

func TestListPaginationValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createDevice("v1", "", nil)
	e.acquire(nil)
	leasesCursor := decode[LeaseList](t, expect(t, e.do("GET", "/v1/leases?limit=1", nil), http.StatusOK))
	e.createDevice("v2", "", nil)
	devicesCursor := decode[DeviceList](t, expect(t, e.do("GET", "/v1/devices?limit=1", nil), http.StatusOK))
	if devicesCursor.NextCursor == nil {
		t.Fatal("no next_cursor with a second device")
	}
	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

	for _, list := range []string{"/v1/devices", "/v1/leases"} {
		for what, query := range map[string]string{
			"limit 0":           "limit=0",
			"limit too big":     "limit=1001",
			"limit negative":    "limit=-5",
			"limit not number":  "limit=ten",
			"cursor not base64": "cursor=" + url.QueryEscape("not base64!"),
			"cursor not json":   "cursor=" + b64("dev-1"),
			"cursor empty json": "cursor=" + b64("{}"),
			"cursor json array": "cursor=" + b64("[]"),
			"cursor trailing":   "cursor=" + b64(`{"name":"a"}{}`),
			"cursor too long":   "cursor=" + strings.Repeat("A", 600),
		} {
			r := expect(t, e.do("GET", list+"?"+query, nil), http.StatusUnprocessableEntity)
			loc := "query." + strings.SplitN(query, "=", 2)[0]
			if !strings.Contains(string(r.body), loc) {
				t.Fatalf("%s %s: %s not located: %s", list, what, loc, r.body)
			}
		}
	}
	// Each list's cursor is its own.
	expect(t, e.do("GET", "/v1/devices?cursor="+url.QueryEscape(*leaseCursorOf(t, leasesCursor)), nil), http.StatusUnprocessableEntity)
	expect(t, e.do("GET", "/v1/leases?cursor="+url.QueryEscape(*devicesCursor.NextCursor), nil), http.StatusUnprocessableEntity)
	// Well-formed cursors work, and the limits themselves are fine.
	expect(t, e.do("GET", "/v1/devices?limit=1000&cursor="+url.QueryEscape(*devicesCursor.NextCursor), nil), http.StatusOK)
	expect(t, e.do("GET", "/v1/devices?limit=1", nil), http.StatusOK)
}

// leaseCursorOf returns the lease list's next_cursor, or a well-formed lease
// cursor when the list had a single page.
func leaseCursorOf(t *testing.T, l LeaseList) *string {
	t.Helper()
	if l.NextCursor != nil {
		return l.NextCursor
	}
	if len(l.Leases) == 0 {
		t.Fatal("no leases to build a cursor from")
	}
	return nextLeaseCursor(&db.LeaseKey{AcquiredAt: l.Leases[0].AcquiredAt, ID: l.Leases[0].ID})
}

func TestListLeasesPaginates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testKeys)
	root, alice, bob := e.as("root"), e.as("alice"), e.as("bob")
	root.createDevice("p1", "lab", nil)
	root.createDevice("p2", "farm", nil)
	// 30 leases of alice's and 15 of bob's, newest last; a few stay active.
	var newestFirst, alices, active []string
	for i := range 45 {
		c, pool := alice, "lab"
		if i%3 == 2 {
			c, pool = bob, "farm"
		}
		l := c.acquire(map[string]any{"pool": pool})
		newestFirst = append([]string{l.ID.String()}, newestFirst...)
		if c == alice {
			alices = append([]string{l.ID.String()}, alices...)
		}
		if i < 43 {
			expect(t, c.do("DELETE", "/v1/leases/"+l.ID.String(), nil), http.StatusNoContent)
		} else {
			active = append([]string{l.ID.String()}, active...)
		}
	}
	for _, tc := range []struct {
		c    *env
		path string
		want []string
	}{
		{root, "/v1/leases?limit=10", newestFirst},
		{root, "/v1/leases?limit=1000", newestFirst},
		{root, "/v1/leases?active=true&limit=1", active},
		{root, "/v1/leases?pool=lab&limit=7", alices},
		{alice, "/v1/leases?limit=4", alices}, // a client pages through its own only
	} {
		got, _ := pageAll(t, tc.c, tc.path, leaseIDs)
		if !slices.Equal(got, tc.want) {
			t.Fatalf("%s as %s: %d leases, want %d in order", tc.path, tc.c.key, len(got), len(tc.want))
		}
	}
}
