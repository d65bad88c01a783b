package db

import (
	"fmt"

	"github.com/devalloc/devalloc/db/devalloctype"
	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

func deviceFromRow(r dbsqlc.DevallocDevice) (Device, error) {
	labels, err := devalloctype.DecodeLabels(r.Labels)
	if err != nil {
		return Device{}, fmt.Errorf("device %q labels: %w", r.Name, err)
	}
	return Device{
		Name:         r.Name,
		Pool:         r.Pool,
		Labels:       labels,
		Address:      r.Address,
		Probe:        r.Probe,
		State:        r.State,
		StateReason:  r.StateReason,
		LeaseID:      r.LeaseID,
		Drain:        r.Drain,
		FencingToken: r.FencingToken,
		LastProbeAt:  r.LastProbeAt,
		LastProbeOK:  r.LastProbeOk,
		CreatedAt:    r.CreatedAt,
		UpdatedAt:    r.UpdatedAt,
	}, nil
}

func devicesFromRows(rows []dbsqlc.DevallocDevice) ([]Device, error) {
	out := make([]Device, 0, len(rows))
	for _, r := range rows {
		d, err := deviceFromRow(r)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// leaseFromRow builds a lease; dev supplies the device's labels and address,
// which the lease row does not copy. dev may be nil when the device was
// deleted since.
func leaseFromRow(r dbsqlc.DevallocLease, dev *Device) Lease {
	l := Lease{
		ID:           r.ID,
		Device:       LeaseDevice{Name: r.DeviceName, Pool: r.Pool, Labels: Labels{}},
		Owner:        r.Owner,
		Holder:       r.Holder,
		FencingToken: r.FencingToken,
		AcquiredAt:   r.AcquiredAt,
		ExpiresAt:    r.ExpiresAt,
		ReleasedAt:   r.ReleasedAt,
		GroupID:      r.GroupID,
		// A waiter's answer and a replay carry it false (confirmed).
		HandoffPending: r.HandoffPending,
	}
	if r.EndReason != nil {
		l.EndReason = *r.EndReason
	}
	if dev != nil {
		l.Device.Labels = dev.Labels
		l.Device.Address = dev.Address
	}
	return l
}

// leaseFromUnprobed builds the lease GrantUnprobed granted (every lease
// column is set when a lease was granted).
func leaseFromUnprobed(r dbsqlc.GrantUnprobedRow) (Lease, error) {
	labels, err := devalloctype.DecodeLabels(r.DeviceLabels)
	if err != nil {
		return Lease{}, fmt.Errorf("device %q labels: %w", *r.DeviceName, err)
	}
	return Lease{
		ID:           *r.ID,
		Device:       LeaseDevice{Name: *r.DeviceName, Pool: *r.Pool, Labels: labels, Address: *r.DeviceAddress},
		Owner:        *r.Owner,
		Holder:       *r.Holder,
		FencingToken: *r.FencingToken,
		AcquiredAt:   *r.AcquiredAt,
		ExpiresAt:    *r.ExpiresAt,
	}, nil
}

// leaseFromHanded builds a lease from a WaiterLeases or GroupLeases row.
func leaseFromHanded(r dbsqlc.WaiterLeasesRow) (Lease, error) {
	l := leaseFromRow(r.DevallocLease, nil)
	if r.DeviceLabels != nil {
		labels, err := devalloctype.DecodeLabels(r.DeviceLabels)
		if err != nil {
			return Lease{}, fmt.Errorf("device %q labels: %w", l.Device.Name, err)
		}
		l.Device.Labels = labels
	}
	if r.DeviceAddress != nil {
		l.Device.Address = *r.DeviceAddress
	}
	return l, nil
}

func keyFromRow(r dbsqlc.DevallocApiKey) APIKey {
	return APIKey{Name: r.Name, Role: r.Role, CreatedAt: r.CreatedAt, RevokedAt: r.RevokedAt}
}
