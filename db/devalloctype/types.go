// Package devalloctype holds devalloc's domain types: devices, leases,
// labels and selectors, their states and end reasons, and the errors the
// allocator answers with. It is a leaf (it imports nothing of devalloc), so
// the API, the CLI and the allocator's own parts share these types without
// depending on one another's insides. Package db names them for its own code.
package devalloctype

import (
	"encoding/json"
	"maps"
	"time"

	"github.com/google/uuid"
)

// Device states, as stored in devalloc.devices.state.
const (
	StateIdle        = "idle"
	StateLeased      = "leased"
	StateOffline     = "offline"
	StateMaintenance = "maintenance"
)

// Lease end reasons, as stored in devalloc.leases.end_reason.
const (
	EndReleased      = "released"
	EndExpired       = "expired"
	EndRevoked       = "revoked"
	EndDeviceRemoved = "device_removed"
	// EndProbeFailed: the device was handed over from the line and failed
	// the waiter's probe (Config.ProbeOnHandoff).
	EndProbeFailed = "probe_failed"
)

// Labels are a device's flat string labels; a selector's labels must all be
// present with equal values for a device to match.
type Labels map[string]string

// Contains reports whether l has every label of want (jsonb's @> for flat
// string objects).
func (l Labels) Contains(want Labels) bool {
	for k, v := range want {
		if got, ok := l[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// JSON renders labels as the jsonb the queries take; nil means {}.
func (l Labels) JSON() []byte {
	if l == nil {
		return []byte("{}")
	}
	b, _ := json.Marshal(l) // a map of strings always marshals
	return b
}

// DecodeLabels reads labels from jsonb; empty means none.
func DecodeLabels(b []byte) (Labels, error) {
	l := Labels{}
	if len(b) == 0 {
		return l, nil
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, err
	}
	return l, nil
}

// Selector says which devices an acquire accepts.
type Selector struct {
	Pool   string
	Labels Labels
}

// Key identifies selectors that accept exactly the same devices.
// json.Marshal sorts map keys, so equal label sets give equal keys.
func (s Selector) Key() string {
	return s.Pool + "\x00" + string(s.Labels.JSON())
}

// Clone is a copy of s that shares no map with it.
func (s Selector) Clone() Selector {
	return Selector{Pool: s.Pool, Labels: maps.Clone(s.Labels)}
}

// Device is one registered device.
type Device struct {
	Name        string
	Pool        string
	Labels      Labels
	Address     string
	Probe       string
	State       string
	StateReason string
	LeaseID     *uuid.UUID
	// Drain: maintenance is due when the current lease ends.
	Drain        bool
	FencingToken int64
	LastProbeAt  *time.Time
	LastProbeOK  *bool
	CreatedAt    time.Time
	UpdatedAt    time.Time
}

// LeaseDevice is what a lease tells its holder about the device.
type LeaseDevice struct {
	Name    string
	Pool    string
	Labels  Labels
	Address string
}

// Lease is one grant of a device to a holder, active or ended.
type Lease struct {
	ID           uuid.UUID
	Device       LeaseDevice
	Owner        string
	Holder       string
	FencingToken int64
	AcquiredAt   time.Time
	ExpiresAt    time.Time
	ReleasedAt   *time.Time
	EndReason    string
	// GroupID is shared by the leases of one group acquire (count > 1).
	GroupID *uuid.UUID
	// Group lists every lease of the group (this one included), in device
	// name order, when the lease came from a group acquire's answer.
	Group []Lease
	// HandoffPending: handed from the line to a waiter whose instance is
	// still probing the device; nobody's answer yet (see migrations/00018).
	HandoffPending bool
}

// Active reports whether the lease has not ended.
func (l Lease) Active() bool { return l.ReleasedAt == nil }

// PoolSummary counts a pool's devices by state, plus its line: how many
// requests wait for it across all instances, and since when the oldest.
type PoolSummary struct {
	Name        string
	Idle        int64
	Leased      int64
	Offline     int64
	Maintenance int64
	Waiting     int64
	// OldestWait is how long the longest-waiting request has been in line;
	// 0 when nobody waits.
	OldestWait time.Duration
}
