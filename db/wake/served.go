package wake

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// servedNotice is the notification devalloc.grant_to_waiter sends when it
// hands a waiter its devices: the waiter's id and, unless that would not
// fit a payload, the leases with what the answer needs of each device.
type servedNotice struct {
	Served *uuid.UUID     `json:"served"`
	Leases []handedNotice `json:"leases"`
}

type handedNotice struct {
	ID           uuid.UUID       `json:"id"`
	DeviceID     *int64          `json:"device_id"`
	DeviceName   string          `json:"device_name"`
	Pool         string          `json:"pool"`
	Owner        string          `json:"owner"`
	Holder       string          `json:"holder"`
	FencingToken int64           `json:"fencing_token"`
	AcquiredAt   time.Time       `json:"acquired_at"`
	ExpiresAt    time.Time       `json:"expires_at"`
	GroupID      *uuid.UUID      `json:"group_id"`
	Labels       json.RawMessage `json:"labels"`
	Address      string          `json:"address"`
	Probe        string          `json:"probe"`
}

// parseServed reads a served notice; ok is false for any other payload.
// handed is nil when the notice carried only the waiter's id.
func parseServed(payload string) (id uuid.UUID, handed []dbsqlc.WaiterLeasesRow, ok bool) {
	var n servedNotice
	if json.Unmarshal([]byte(payload), &n) != nil || n.Served == nil {
		return uuid.UUID{}, nil, false
	}
	for _, l := range n.Leases {
		waiter, address, probe := *n.Served, l.Address, l.Probe
		handed = append(handed, dbsqlc.WaiterLeasesRow{
			DevallocLease: dbsqlc.DevallocLease{
				ID: l.ID, DeviceID: l.DeviceID, DeviceName: l.DeviceName, Pool: l.Pool, Owner: l.Owner, Holder: l.Holder,
				FencingToken: l.FencingToken, AcquiredAt: l.AcquiredAt, ExpiresAt: l.ExpiresAt, GroupID: l.GroupID,
				WaiterID: &waiter, ActiveDeviceID: l.DeviceID,
			},
			DeviceLabels: l.Labels, DeviceAddress: &address, DeviceProbe: &probe,
		})
	}
	return *n.Served, handed, true
}

// ServedChannel is the NOTIFY channel on which the transactions that hand
// devices to an instance's waiters tell it (devalloc.grant_to_waiter,
// EndLease).
func ServedChannel(instance int64) string {
	return fmt.Sprintf("devalloc_served_%d", instance)
}
