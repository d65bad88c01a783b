package httpapi

import (
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db/devalloctype"
)

// Ceilings of wait_seconds and ttl_seconds in the schema, whatever the
// server's configured maxima (which may only be lower): out-of-range
// numbers are then refused with the field's name by schema validation.
// They must match the maximum tags below.
const (
	WaitSecondsCeiling = 86400    // a day
	TTLSecondsCeiling  = 31536000 // 365 days
)

// Request and response bodies. They are exported because their names become
// the OpenAPI component names (and Go clients may reuse them); the JSON
// shapes are the contract in DESIGN.md, so rename nothing.
//
// Static limits live in struct tags, where Huma enforces them and documents
// them in the spec; limits from the allocator's configuration (max TTL, max
// wait) and label keys (JSON Schema's propertyNames is not enforced by Huma)
// are checked in validate.go.

// Labels are a device's flat string labels, or a selector's required
// labels.
type Labels map[string]string

// Schema documents the static label limits; Huma enforces the count and
// value lengths from it, validate.go the key syntax.
func (Labels) Schema(huma.Registry) *huma.Schema {
	maxLabels, maxValue := maxLabels, maxLabelValue
	value := &huma.Schema{Type: huma.TypeString, MaxLength: &maxValue}
	// Huma precomputes the messages of the schema it is handed, not of
	// the additionalProperties inside it; without this a too-long value is
	// reported with an empty message.
	value.PrecomputeMessages()
	return &huma.Schema{
		Type: huma.TypeObject,
		Description: "Flat string labels. Keys: 1-63 characters of A-Z a-z 0-9 . _ / -; " +
			"values: at most 256 characters; at most 32 labels.",
		MaxProperties:        &maxLabels,
		AdditionalProperties: value,
		Examples:             []any{map[string]any{"os": "android", "model": "pixel-7"}},
	}
}

// Device is a registered device.
type Device struct {
	Name         string     `json:"name" doc:"Unique device name." example:"pixel-7-01"`
	Pool         string     `json:"pool" doc:"Pool the device is allocated from." example:"android"`
	Labels       Labels     `json:"labels"`
	Address      string     `json:"address" doc:"Where a holder reaches the device: host:port for tcp, a URL for http." example:"10.0.0.17:5555"`
	Probe        string     `json:"probe" enum:"tcp,http,none" doc:"How devalloc checks the device answers before handing it out." example:"tcp"`
	State        string     `json:"state" enum:"idle,leased,offline,maintenance" doc:"idle (can be acquired), leased, offline (failed a probe; rechecked automatically) or maintenance (set by an admin)." example:"idle"`
	StateReason  string     `json:"state_reason" doc:"Why the device is in its state, e.g. the probe error that took it offline." example:"tcp 10.0.0.17:5555: connection refused"`
	LeaseID      *uuid.UUID `json:"lease_id" format:"uuid" nullable:"true" doc:"The active lease, null unless leased." example:"01936b2e-7f3a-7c1d-9b8e-2f4a5c6d7e8f"`
	Drain        bool       `json:"drain" doc:"true when an admin drained the device while it was leased: it goes to maintenance, not idle, when the lease ends." example:"false"`
	FencingToken int64      `json:"fencing_token" doc:"Bumped on every acquire; compare with a lease's token to detect a stale holder." example:"42"`
	LastProbeAt  *time.Time `json:"last_probe_at" doc:"When the device was last probed, null if never (RFC 3339, UTC)." example:"2026-11-26T01:41:43.008659Z"`
	CreatedAt    time.Time  `json:"created_at" doc:"When the device was registered (RFC 3339, UTC)." example:"2026-11-26T01:41:34.219748Z"`
	UpdatedAt    time.Time  `json:"updated_at" doc:"When the device last changed (RFC 3339, UTC)." example:"2026-11-26T01:41:43.008659Z"`
}

// DeviceList is the listDevices response.
type DeviceList struct {
	Devices    []Device `json:"devices" nullable:"false" doc:"Devices by name."`
	NextCursor *string  `json:"next_cursor,omitempty" doc:"Pass as cursor to get the next page; absent on the last page." example:"eyJuYW1lIjoicGl4ZWwtNy0wMSJ9"`
}

// CreateDeviceRequest registers a device.
type CreateDeviceRequest struct {
	Name    string `json:"name" minLength:"1" maxLength:"128" pattern:"^[A-Za-z0-9][A-Za-z0-9._-]*$" doc:"Unique device name: 1-128 characters of A-Z a-z 0-9 . _ -, starting alphanumeric." example:"pixel-7-01"`
	Pool    string `json:"pool,omitempty" default:"default" minLength:"1" maxLength:"128" pattern:"^[A-Za-z0-9][A-Za-z0-9._-]*$" doc:"Pool to allocate the device from; same syntax as name." example:"android"`
	Labels  Labels `json:"labels,omitempty"`
	Address string `json:"address" minLength:"1" maxLength:"1024" doc:"Where a holder (and the probe) reaches the device: host:port for tcp, a URL or host:port[/path] for http." example:"10.0.0.17:5555"`
	Probe   string `json:"probe,omitempty" default:"tcp" enum:"tcp,http,none" doc:"How devalloc checks the device answers before handing it out." example:"tcp"`
}

// UpdateDeviceRequest changes a device; absent fields stay as they are.
type UpdateDeviceRequest struct {
	Labels  *Labels `json:"labels,omitempty" doc:"Replaces all of the device's labels."`
	Address *string `json:"address,omitempty" minLength:"1" maxLength:"1024" doc:"New address." example:"10.0.0.18:5555"`
	Probe   *string `json:"probe,omitempty" enum:"tcp,http,none" doc:"New probe kind." example:"http"`
	State   *string `json:"state,omitempty" enum:"maintenance,idle" doc:"maintenance takes the device out of rotation; idle puts it back. Refused (409) while the device is leased (drain it instead)." example:"maintenance"`
	Drain   *bool   `json:"drain,omitempty" doc:"true: maintenance without cutting off a holder, at once if the device is not leased, else when its lease ends. false: cancel that, and put a device in maintenance back to idle. Not together with state." example:"true"`
	Reason  *string `json:"reason,omitempty" maxLength:"1024" doc:"Why the state changes (shown as state_reason); only with state or drain." example:"screen cracked"`
}

// LeaseDevice is what a lease tells its holder about the device.
type LeaseDevice struct {
	Name    string `json:"name" doc:"The device's name." example:"pixel-7-01"`
	Pool    string `json:"pool" doc:"The device's pool." example:"android"`
	Labels  Labels `json:"labels"`
	Address string `json:"address" doc:"Where to reach the device; empty if it was deleted since." example:"10.0.0.17:5555"`
}

// Lease is one grant of a device to a holder, active or ended.
type Lease struct {
	ID             uuid.UUID   `json:"id" format:"uuid" doc:"Lease id." example:"01936b2e-7f3a-7c1d-9b8e-2f4a5c6d7e8f"`
	Device         LeaseDevice `json:"device"`
	Owner          string      `json:"owner" doc:"The API key that acquired the lease; only it (or an admin) may renew or release it." example:"ci-runner"`
	Holder         string      `json:"holder" doc:"The client's own description of who holds the device." example:"https://ci.example.com/jobs/1234"`
	FencingToken   int64       `json:"fencing_token" doc:"The device's fencing token for this lease; a larger token means a newer lease." example:"42"`
	AcquiredAt     time.Time   `json:"acquired_at" doc:"When the lease was granted (RFC 3339, UTC)." example:"2026-11-26T01:41:43.036272Z"`
	ExpiresAt      time.Time   `json:"expires_at" doc:"The lease ends here unless renewed (RFC 3339, UTC)." example:"2026-11-26T01:51:43.036272Z"`
	ReleasedAt     *time.Time  `json:"released_at" doc:"When the lease ended, null while active (RFC 3339, UTC)." example:"2026-11-26T01:45:02.118Z"`
	EndReason      *string     `json:"end_reason" enum:"released,expired,revoked,device_removed,probe_failed" nullable:"true" doc:"Why the lease ended: released, expired, revoked, device_removed, or probe_failed (handed over from the line, the device failed the waiter's probe; the waiter kept its place in line); null while active." example:"released"`
	GroupID        *uuid.UUID  `json:"group_id,omitempty" format:"uuid" doc:"Shared by the leases of one group acquire (count > 1), see /v1/lease-groups/{id}; absent for a single lease." example:"01936b2f-0a1b-7c2d-8e3f-4a5b6c7d8e9f"`
	HandoffPending bool        `json:"handoff_pending,omitempty" doc:"True while the lease, handed over from the line, waits for its waiter's probe of the device: nobody's answer yet (the probe may fail and the lease end as probe_failed, or be given back); an acquire or its replay never answers with such a lease. Absent otherwise." example:"false"`
	// Group is on the Lease itself, not a separate acquire response type,
	// so the acquire still answers a Lease (and the Go SDK's JSON201 stays
	// a *Lease); only the acquire (and its idempotent replay) fills it.
	Group []Lease `json:"group,omitempty" nullable:"false" doc:"Only in the answer of a group acquire (count > 1): every lease of the group, this one included, in device name order."`
}

// LeaseList is the listLeases response.
type LeaseList struct {
	Leases     []Lease `json:"leases" nullable:"false" doc:"Leases, newest first."`
	NextCursor *string `json:"next_cursor,omitempty" doc:"Pass as cursor to get the next page; absent on the last page." example:"eyJhY3F1aXJlZF9hdF91cyI6MTc2NDExOTI2MDAwMDAwMCwiaWQiOiIwMTkzNmIyZS03ZjNhLTdjMWQtOWI4ZS0yZjRhNWM2ZDdlOGYifQ"`
}

// AcquireLeaseRequest asks for a device. Every field is optional, and so
// is the body.
type AcquireLeaseRequest struct {
	Pool        string `json:"pool,omitempty" default:"default" minLength:"1" maxLength:"128" pattern:"^[A-Za-z0-9][A-Za-z0-9._-]*$" doc:"Pool to take a device from." example:"android"`
	Labels      Labels `json:"labels,omitempty" doc:"Labels the device must have (all of them, with equal values)."`
	WaitSeconds int64  `json:"wait_seconds,omitempty" minimum:"0" maximum:"86400" doc:"How long to wait for a matching device to become free (long-poll); 0 answers at once. At most the server's max wait (default 900)." example:"30"`
	TTLSeconds  int64  `json:"ttl_seconds,omitempty" minimum:"1" maximum:"31536000" doc:"Lease lifetime; renew before it passes. Default the server's default TTL (600); at most its max TTL (default 86400)." example:"600"`
	Holder      string `json:"holder,omitempty" maxLength:"1024" doc:"Free text saying who holds the device, e.g. a CI job URL." example:"https://ci.example.com/jobs/1234"`
	Count       int    `json:"count,omitempty" default:"1" minimum:"1" maximum:"64" doc:"How many devices to lease, all or nothing: with count > 1 the answer is the first lease of a group, with every lease of it in group (manage them together under /v1/lease-groups/{group_id})." example:"1"`
	Priority    int    `json:"priority,omitempty" default:"0" minimum:"-100" maximum:"100" doc:"Place in the line when the request must wait: higher is served first, and waiting makes up for a lower priority over time. Client keys may ask for at most the server's client maximum (default 10)." example:"0"`
}

// RenewLeaseRequest extends a lease.
type RenewLeaseRequest struct {
	TTLSeconds int64 `json:"ttl_seconds,omitempty" minimum:"1" maximum:"31536000" doc:"New lifetime from now; default the server's default TTL." example:"600"`
}

// PoolSummary counts one pool's devices by state.
type PoolSummary struct {
	Name        string `json:"name" doc:"Pool name." example:"android"`
	Idle        int64  `json:"idle" doc:"Devices that can be acquired now." example:"3"`
	Leased      int64  `json:"leased" doc:"Devices held under a lease." example:"5"`
	Offline     int64  `json:"offline" doc:"Devices that failed a probe; rechecked automatically." example:"1"`
	Maintenance int64  `json:"maintenance" doc:"Devices an admin took out of rotation." example:"0"`
	Waiting     int64  `json:"waiting" doc:"Acquires waiting in this pool's line, across all instances." example:"2"`
	// Seconds as a number (not a duration string), like every other time
	// span in the API (wait_seconds, ttl_seconds).
	OldestWaitSeconds float64 `json:"oldest_wait_seconds" doc:"How long the longest-waiting acquire in the line has waited, in seconds; 0 when nobody waits." example:"12.5"`
}

// PoolList is the listPools response.
type PoolList struct {
	Pools []PoolSummary `json:"pools" nullable:"false" doc:"Pools by name."`
}

// LeaseGroup is the leases of one group acquire.
type LeaseGroup struct {
	ID     uuid.UUID `json:"id" format:"uuid" doc:"Group id (the group_id of its leases)." example:"01936b2f-0a1b-7c2d-8e3f-4a5b6c7d8e9f"`
	Leases []Lease   `json:"leases" nullable:"false" doc:"Every lease of the group, active or ended, in device name order."`
}

// QueueEntry is one acquire waiting in a pool's line.
type QueueEntry struct {
	ID            uuid.UUID `json:"id" format:"uuid" doc:"The waiting request's id." example:"01936b30-5c6d-7e8f-9a0b-1c2d3e4f5a6b"`
	Pool          string    `json:"pool" doc:"The pool it waits on." example:"android"`
	Labels        Labels    `json:"labels"`
	Count         int       `json:"count" doc:"Devices it wants, all or nothing." example:"1"`
	Priority      int       `json:"priority" doc:"The priority it asked for." example:"0"`
	Owner         string    `json:"owner" doc:"The API key that asked." example:"ci-runner"`
	Holder        string    `json:"holder" doc:"The holder it gave." example:"https://ci.example.com/jobs/1234"`
	Position      int       `json:"position" doc:"Its place in the pool's whole line, 1 being served first (even when the list shows only your own requests)." example:"1"`
	EnqueuedAt    time.Time `json:"enqueued_at" doc:"When it joined the line (RFC 3339, UTC)." example:"2026-11-26T01:41:43.036272Z"`
	WaitedSeconds float64   `json:"waited_seconds" doc:"How long it has waited so far, in seconds." example:"12.5"`
}

// Queue is the getQueue response.
type Queue struct {
	Queue []QueueEntry `json:"queue" nullable:"false" doc:"Waiting requests, by pool, in the order they will be served."`
}

// HealthStatus is the healthz/readyz response.
type HealthStatus struct {
	Status string `json:"status" doc:"Always ok when the server answers." example:"ok"`
}

func deviceFromDB(d devalloctype.Device) Device {
	return Device{
		Name:         d.Name,
		Pool:         d.Pool,
		Labels:       labelsFromDB(d.Labels),
		Address:      d.Address,
		Probe:        d.Probe,
		State:        d.State,
		StateReason:  d.StateReason,
		LeaseID:      d.LeaseID,
		Drain:        d.Drain,
		FencingToken: d.FencingToken,
		LastProbeAt:  utcPtr(d.LastProbeAt),
		CreatedAt:    d.CreatedAt.UTC(),
		UpdatedAt:    d.UpdatedAt.UTC(),
	}
}

func leaseFromDB(l devalloctype.Lease) Lease {
	out := Lease{
		ID: l.ID,
		Device: LeaseDevice{
			Name:    l.Device.Name,
			Pool:    l.Device.Pool,
			Labels:  labelsFromDB(l.Device.Labels),
			Address: l.Device.Address,
		},
		Owner:        l.Owner,
		Holder:       l.Holder,
		FencingToken: l.FencingToken,
		AcquiredAt:   l.AcquiredAt.UTC(),
		ExpiresAt:    l.ExpiresAt.UTC(),
		ReleasedAt:   utcPtr(l.ReleasedAt),
		GroupID:      l.GroupID,
		// Listing (a DBA, an SDK) shows it; an acquire's answer never has it.
		HandoffPending: l.HandoffPending,
	}
	for _, g := range l.Group {
		out.Group = append(out.Group, leaseFromDB(g))
	}
	if l.EndReason != "" {
		reason := l.EndReason
		out.EndReason = &reason
	}
	return out
}

// labelsFromDB never returns nil, so JSON shows {} rather than null.
func labelsFromDB(l devalloctype.Labels) Labels {
	out := make(Labels, len(l))
	for k, v := range l {
		out[k] = v
	}
	return out
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
