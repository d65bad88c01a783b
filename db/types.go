package db

import "github.com/devalloc/devalloc/db/devalloctype"

// The domain types are defined in db/devalloctype, a leaf package that the
// API and the CLI import for them; these names are the same types, for
// this package's own code and for callers that hold an Allocator anyway.
type (
	Labels      = devalloctype.Labels
	Selector    = devalloctype.Selector
	Device      = devalloctype.Device
	LeaseDevice = devalloctype.LeaseDevice
	Lease       = devalloctype.Lease
	PoolSummary = devalloctype.PoolSummary
)

// Device states, as stored in devalloc.devices.state.
const (
	StateIdle        = devalloctype.StateIdle
	StateLeased      = devalloctype.StateLeased
	StateOffline     = devalloctype.StateOffline
	StateMaintenance = devalloctype.StateMaintenance
)

// Lease end reasons, as stored in devalloc.leases.end_reason.
const (
	EndReleased      = devalloctype.EndReleased
	EndExpired       = devalloctype.EndExpired
	EndRevoked       = devalloctype.EndRevoked
	EndDeviceRemoved = devalloctype.EndDeviceRemoved
	EndProbeFailed   = devalloctype.EndProbeFailed
)
