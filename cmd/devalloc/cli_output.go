package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/devalloc/devalloc/httpapi/client"
)

// What the client commands print: aligned tables for people, or with
// --json the API's objects, indented.

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes tab-separated rows aligned into columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		// A tab or newline in a value (a free-text holder) would break
		// the columns.
		cells[i] = strings.Join(strings.Fields(c), " ")
		if cells[i] == "" {
			cells[i] = "-"
		}
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// printLease shows one lease as a card of aligned name/value lines.
func printLease(w io.Writer, l client.Lease, now time.Time) error {
	t := newTable(w)
	t.row("lease", l.ID.String())
	t.row("device", l.Device.Name)
	t.row("pool", l.Device.Pool)
	t.row("address", l.Device.Address)
	t.row("labels", labelString(l.Device.Labels))
	t.row("owner", l.Owner)
	t.row("holder", l.Holder)
	t.row("fencing token", strconv.FormatInt(l.FencingToken, 10))
	t.row("acquired", stamp(l.AcquiredAt))
	t.row("expires", stamp(l.ExpiresAt)+" ("+leaseStatus(l, now)+")")
	if l.ReleasedAt != nil {
		t.row("ended", stamp(*l.ReleasedAt))
	}
	return t.flush()
}

func printLeases(w io.Writer, leases []client.Lease, now time.Time) error {
	t := newTable(w, "ID", "DEVICE", "POOL", "OWNER", "HOLDER", "ACQUIRED", "STATUS")
	for _, l := range leases {
		t.row(l.ID.String(), l.Device.Name, l.Device.Pool, l.Owner, l.Holder, stamp(l.AcquiredAt), leaseStatus(l, now))
	}
	return t.flush()
}

func printDevices(w io.Writer, devices []client.Device) error {
	t := newTable(w, "NAME", "POOL", "STATE", "PROBE", "ADDRESS", "LABELS", "REASON")
	for _, d := range devices {
		state := string(d.State)
		if d.Drain {
			state += " (draining)"
		}
		t.row(d.Name, d.Pool, state, string(d.Probe), d.Address, labelString(d.Labels), d.StateReason)
	}
	return t.flush()
}

func printPools(w io.Writer, pools []client.PoolSummary) error {
	t := newTable(w, "POOL", "IDLE", "LEASED", "OFFLINE", "MAINTENANCE", "WAITING")
	n := func(i int64) string { return strconv.FormatInt(i, 10) }
	for _, p := range pools {
		t.row(p.Name, n(p.Idle), n(p.Leased), n(p.Offline), n(p.Maintenance), n(p.Waiting))
	}
	return t.flush()
}

// leaseStatus is "active, 9m58s left" or "released 2m ago".
func leaseStatus(l client.Lease, now time.Time) string {
	if l.ReleasedAt == nil {
		left := l.ExpiresAt.Sub(now)
		if left < 0 {
			return "active, expiring now"
		}
		return "active, " + human(left) + " left"
	}
	reason := "ended"
	if l.EndReason != nil {
		reason = string(*l.EndReason)
	}
	return reason + " " + human(now.Sub(*l.ReleasedAt)) + " ago"
}

// stamp is an RFC 3339 UTC time to the second.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// human rounds d for reading: seconds below an hour, minutes above.
func human(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	if d >= time.Hour {
		d = d.Round(time.Minute)
	} else {
		d = d.Round(time.Second)
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s") // 10m, 1h5m
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m") // 2h
	}
	return s
}
