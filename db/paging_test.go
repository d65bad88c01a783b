package db

import (
	"fmt"
	"slices"
	"testing"

	"github.com/google/uuid"
)

// Paging 250 devices by 100 lists each once, in name order, whatever the
// filter; the last page says there is no next one.
func TestListDevicesPages(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	var all, inA, maint []string
	// Created out of name order, so the listing order is the query's doing.
	for _, i := range rangePermuted(250) {
		name := fmt.Sprintf("dev-%03d", i)
		pool := []string{"a", "b"}[i%2]
		mustCreate(t, a, name, pool, "h:1", nil)
		if i%5 == 0 {
			state := StateMaintenance
			if _, err := a.UpdateDevice(t.Context(), name, DevicePatch{State: &state}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range 250 {
		name := fmt.Sprintf("dev-%03d", i)
		all = append(all, name)
		if i%2 == 0 {
			inA = append(inA, name)
		}
		if i%5 == 0 {
			maint = append(maint, name)
		}
	}
	for _, tc := range []struct {
		filter DeviceFilter
		want   []string
	}{
		{DeviceFilter{Limit: 100}, all},
		{DeviceFilter{Limit: 100, Pool: "a"}, inA},
		{DeviceFilter{Limit: 20, State: StateMaintenance}, maint},
		{DeviceFilter{Limit: 7, Pool: "b", State: StateMaintenance}, filterNames(maint, inA)},
		{DeviceFilter{Limit: 1000}, all},
		{DeviceFilter{Limit: 25}, all}, // ends exactly on a page boundary
	} {
		var got []string
		pages := 0
		f := tc.filter
		for {
			page, err := a.ListDevicesPage(t.Context(), f)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			if len(page.Devices) > f.Limit {
				t.Fatalf("%+v: page of %d", tc.filter, len(page.Devices))
			}
			for _, d := range page.Devices {
				got = append(got, d.Name)
			}
			if page.Next == nil {
				break
			}
			if *page.Next != got[len(got)-1] {
				t.Fatalf("next %q is not the page's last name %q", *page.Next, got[len(got)-1])
			}
			f.After = *page.Next
		}
		if !slices.Equal(got, tc.want) {
			t.Fatalf("%+v: listed %d devices %v..., want %d", tc.filter, len(got), head(got), len(tc.want))
		}
		if wantPages := max(1, (len(tc.want)+tc.filter.Limit-1)/tc.filter.Limit); pages != wantPages {
			t.Fatalf("%+v: %d pages, want %d", tc.filter, pages, wantPages)
		}
	}
	// The default page size.
	page, err := a.ListDevicesPage(t.Context(), DeviceFilter{})
	if err != nil || len(page.Devices) != DefaultPageSize || page.Next == nil {
		t.Fatalf("default page: %d devices, next %v, err %v", len(page.Devices), page.Next, err)
	}
}

// filterNames keeps the names of a that are not in b.
func filterNames(a, b []string) []string {
	var out []string
	for _, n := range a {
		if !slices.Contains(b, n) {
			out = append(out, n)
		}
	}
	return out
}

func head(s []string) []string { return s[:min(5, len(s))] }

// rangePermuted is 0..n-1 in a fixed scrambled order.
func rangePermuted(n int) []int {
	out := make([]int, n)
	for i := range n {
		out[i] = (i*7 + 3) % n // 7 is coprime with 250
	}
	return out
}

// Leases page newest first; leases acquired at the same instant (ties are
// common in bulk history) are each listed once, ordered by id.
func TestListLeasesPages(t *testing.T) {
	a := newAllocator(t, newDB(t), testConfig(&fakeProber{}))
	// History: 250 ended leases, ten per second, so most share acquired_at.
	if _, err := a.pool.Exec(t.Context(), `
		INSERT INTO devalloc.leases (device_name, pool, owner, fencing_token, acquired_at, expires_at, released_at, end_reason)
		SELECT 'old-' || g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END, CASE WHEN g % 3 = 0 THEN 'alice' ELSE 'bob' END, g,
		       timestamptz '2026-01-01 00:00:00Z' + (g / 10) * interval '1 second',
		       timestamptz '2026-01-01 01:00:00Z', timestamptz '2026-01-01 02:00:00Z', 'released'
		FROM generate_series(1, 250) g`); err != nil {
		t.Fatal(err)
	}
	// And a few active ones.
	for i := range 3 {
		mustCreate(t, a, fmt.Sprintf("d%d", i), "a", "h:1", nil)
		mustAcquire(t, a, AcquireRequest{Selector: Selector{Pool: "a"}, Owner: "alice"})
	}
	for _, f := range []LeaseFilter{
		{Limit: 100},
		{Limit: 100, Owner: "alice"},
		{Limit: 30, Pool: "b"},
		{Limit: 2, ActiveOnly: true},
		{Limit: 13, Pool: "a", Owner: "bob"},
	} {
		want := expectedLeaseOrder(t, a, f)
		var got []uuid.UUID
		g := f
		for {
			page, err := a.ListLeasesPage(t.Context(), g)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range page.Leases {
				got = append(got, l.ID)
			}
			if page.Next == nil {
				break
			}
			g.After = page.Next
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%+v: listed %d leases, want %d in order", f, len(got), len(want))
		}
		if len(want) == 0 {
			t.Fatalf("%+v: the test data matches nothing", f)
		}
	}
}

// expectedLeaseOrder is the whole filtered list in one query, as the pages
// must deliver it.
func expectedLeaseOrder(t *testing.T, a *Allocator, f LeaseFilter) []uuid.UUID {
	t.Helper()
	rows, err := a.pool.Query(t.Context(), `SELECT id FROM devalloc.leases
		WHERE (NOT $1 OR released_at IS NULL) AND ($2 = '' OR pool = $2) AND ($3 = '' OR owner = $3)
		ORDER BY acquired_at DESC, id DESC`, f.ActiveOnly, f.Pool, f.Owner)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []uuid.UUID
	for rows.Next() {
		var id uuid.UUID
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}
