package db

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// DeviceSpec registers a device.
type DeviceSpec struct {
	Name    string
	Pool    string
	Labels  Labels
	Address string
	Probe   string
}

// CreateDevice registers a device as idle. Registering wakes waiters
// (through the devices trigger) like any device becoming idle.
func (a *Allocator) CreateDevice(ctx context.Context, spec DeviceSpec) (Device, error) {
	r, err := a.q.CreateDevice(ctx, dbsqlc.CreateDeviceParams{
		Name:    spec.Name,
		Pool:    spec.Pool,
		Labels:  spec.Labels.JSON(),
		Address: spec.Address,
		Probe:   spec.Probe,
	})
	if isUniqueViolation(err) {
		return Device{}, ErrDeviceExists
	}
	if err != nil {
		return Device{}, fmt.Errorf("create device %q: %w", spec.Name, err)
	}
	return deviceFromRow(r)
}

// GetDevice returns the device by name.
func (a *Allocator) GetDevice(ctx context.Context, name string) (Device, error) {
	r, err := a.q.GetDevice(ctx, name)
	if errors.Is(err, pgx.ErrNoRows) {
		return Device{}, ErrNotFound
	}
	if err != nil {
		return Device{}, fmt.Errorf("get device %q: %w", name, err)
	}
	return deviceFromRow(r)
}

// DeviceFilter narrows ListDevices; empty fields match everything.
type DeviceFilter struct {
	Pool  string
	State string
	// After is the name the previous page ended with; "" starts at the
	// first device.
	After string
	// Limit is the page size: 0 means DefaultPageSize, at most MaxPageSize.
	Limit int
}

// DevicePage is one page of devices, by name.
type DevicePage struct {
	Devices []Device
	// Next is the After of the following page; nil on the last page.
	Next *string
}

// ListDevicesPage returns one page of devices by name (keyset pagination:
// each page costs the same however far in it is).
func (a *Allocator) ListDevicesPage(ctx context.Context, f DeviceFilter) (DevicePage, error) {
	limit := pageSize(f.Limit)
	rows, err := a.q.ListDevices(ctx, dbsqlc.ListDevicesParams{
		Pool:      optional(f.Pool),
		State:     optional(f.State),
		AfterName: optional(f.After),
		MaxRows:   int32(limit + 1), // one more tells whether a next page exists
	})
	if err != nil {
		return DevicePage{}, fmt.Errorf("list devices: %w", err)
	}
	more := len(rows) > limit
	if more {
		rows = rows[:limit]
	}
	devs, err := devicesFromRows(rows)
	if err != nil {
		return DevicePage{}, err
	}
	page := DevicePage{Devices: devs}
	if more {
		next := devs[len(devs)-1].Name
		page.Next = &next
	}
	return page, nil
}

// ListDevices returns the first page of devices by name (see
// ListDevicesPage).
func (a *Allocator) ListDevices(ctx context.Context, f DeviceFilter) ([]Device, error) {
	page, err := a.ListDevicesPage(ctx, f)
	return page.Devices, err
}

// DevicePatch changes a device; nil fields stay as they are. State may be
// StateMaintenance (take it out of rotation) or StateIdle (put it back).
// Drain true asks for maintenance without cutting off a holder: at once
// when the device is not leased, else when its lease ends; Drain false
// cancels that and puts a device in maintenance back to idle. Give State
// or Drain, not both.
type DevicePatch struct {
	Labels  *Labels
	Address *string
	Probe   *string
	State   *string
	Drain   *bool
	Reason  string
}

// UpdateDevice applies patch under the device's row lock. A state change on
// a leased device fails with ErrDeviceLeased: the holder's lease must end
// first, so a device is never pulled from under its holder silently.
func (a *Allocator) UpdateDevice(ctx context.Context, name string, patch DevicePatch) (Device, error) {
	var out Device
	err := inTx(ctx, a.pool, func(tx pgx.Tx) error {
		q := a.q.WithTx(tx)
		row, err := q.LockDevice(ctx, name)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if patch.Labels != nil || patch.Address != nil || patch.Probe != nil {
			var labels []byte
			if patch.Labels != nil {
				labels = patch.Labels.JSON()
			}
			if row, err = q.UpdateDeviceSpec(ctx, dbsqlc.UpdateDeviceSpecParams{
				ID: row.ID, Labels: labels, Address: patch.Address, Probe: patch.Probe,
			}); err != nil {
				return err
			}
		}
		if patch.Drain != nil {
			if row, err = a.drain(ctx, q, row, *patch.Drain, patch.Reason); err != nil {
				return err
			}
		}
		if patch.State != nil && *patch.State != row.State {
			if row.State == StateLeased {
				return ErrDeviceLeased
			}
			if row, err = q.SetDeviceState(ctx, dbsqlc.SetDeviceStateParams{
				ID: row.ID, State: *patch.State, StateReason: patch.Reason,
			}); err != nil {
				return err
			}
		}
		out, err = deviceFromRow(row)
		return err
	})
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrDeviceLeased) {
		return Device{}, err
	}
	if err != nil {
		return Device{}, fmt.Errorf("update device %q: %w", name, err)
	}
	return out, nil
}

// drain applies a drain request to the locked device row.
func (a *Allocator) drain(ctx context.Context, q *dbsqlc.Queries, row dbsqlc.DevallocDevice, on bool, reason string) (dbsqlc.DevallocDevice, error) {
	switch {
	case on && row.State == StateLeased:
		return q.SetDeviceDrain(ctx, dbsqlc.SetDeviceDrainParams{ID: row.ID, Drain: true})
	case on && row.State != StateMaintenance:
		if reason == "" {
			reason = "drained"
		}
		return q.SetDeviceState(ctx, dbsqlc.SetDeviceStateParams{ID: row.ID, State: StateMaintenance, StateReason: reason})
	case !on && row.State == StateMaintenance:
		return q.SetDeviceState(ctx, dbsqlc.SetDeviceStateParams{ID: row.ID, State: StateIdle, StateReason: reason})
	case !on && row.Drain:
		return q.SetDeviceDrain(ctx, dbsqlc.SetDeviceDrainParams{ID: row.ID, Drain: false})
	}
	return row, nil
}

// deleteAttempts bounds how often a forced delete looks again at a device
// that was leased anew while it ended the lease it had seen.
const deleteAttempts = 3

// errLeaseChanged: the device's lease is no longer the one the delete
// ended (or saw ended); the delete looks again.
var errLeaseChanged = errors.New("the device was leased anew meanwhile")

// DeleteDevice removes a device. A leased device fails with
// ErrDeviceLeased unless force is set; then its lease ends with end_reason
// device_removed in the same transaction as the device goes, so nobody in
// line is handed the device on the way. The lease history stays.
func (a *Allocator) DeleteDevice(ctx context.Context, name string, force bool) error {
	var err error
	for range deleteAttempts {
		if err = a.deleteDeviceOnce(ctx, name, force); !errors.Is(err, errLeaseChanged) {
			break
		}
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotFound) || errors.Is(err, ErrDeviceLeased):
		return err
	case errors.Is(err, errLeaseChanged):
		// Leased again each time a lease ended: an ordinary conflict.
		return ErrDeviceLeased
	default:
		return fmt.Errorf("delete device %q: %w", name, err)
	}
}

// deleteDeviceOnce deletes the device in one transaction, ending the lease
// it saw first when forced (lease, then device: the lock order of every
// release).
func (a *Allocator) deleteDeviceOnce(ctx context.Context, name string, force bool) error {
	dev, err := a.GetDevice(ctx, name)
	if err != nil {
		return err
	}
	if dev.LeaseID != nil && !force {
		return ErrDeviceLeased
	}
	return inTx(ctx, a.pool, func(tx pgx.Tx) error {
		q := a.q.WithTx(tx)
		var ended *uuid.UUID
		if dev.LeaseID != nil {
			id, err := q.EndLeaseForRemoval(ctx, *dev.LeaseID)
			switch {
			case err == nil:
				ended = &id
			case !errors.Is(err, pgx.ErrNoRows):
				return fmt.Errorf("end its lease: %w", err)
			}
			// No row: the lease ended meanwhile; the device is looked at
			// as it is now.
		}
		row, err := q.LockDevice(ctx, name)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if row.LeaseID != nil && (ended == nil || *row.LeaseID != *ended) {
			if !force {
				return ErrDeviceLeased
			}
			return errLeaseChanged
		}
		n, err := q.DeleteDevice(ctx, dbsqlc.DeleteDeviceParams{ID: row.ID, EndedLeaseID: ended})
		if err != nil {
			return err
		}
		if n == 0 {
			// Cannot happen with the row locked and checked; never delete
			// a device from under a holder on a guess.
			return ErrDeviceLeased
		}
		return nil
	})
}

// Pools summarises every pool's devices by state, with its line across all
// instances.
func (a *Allocator) Pools(ctx context.Context) ([]PoolSummary, error) {
	rows, err := a.q.PoolSummaries(ctx)
	if err != nil {
		return nil, fmt.Errorf("pool summaries: %w", err)
	}
	out := make([]PoolSummary, 0, len(rows))
	for _, r := range rows {
		out = append(out, PoolSummary{
			Name: r.Pool, Idle: r.Idle, Leased: r.Leased, Offline: r.Offline,
			Maintenance: r.Maintenance, Waiting: r.Waiting,
			OldestWait: time.Duration(r.OldestWaitSeconds * float64(time.Second)),
		})
	}
	return out, nil
}

func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}
