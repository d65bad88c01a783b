package httpapi

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"github.com/danielgtaylor/huma/v2"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/db/devalloctype"
)

// Path parameters name existing devices, so they are not held to the
// creation syntax: a device registered by other means must stay reachable.
// (Each input declares it itself: Huma ignores embedded structs of
// unexported types, so a shared unexported param struct would stay empty.)
type getDeviceInput struct {
	Name string `path:"name" minLength:"1" doc:"Device name." example:"pixel-7-01"`
}

type createDeviceInput struct {
	Body CreateDeviceRequest
}

type createDeviceOutput struct {
	Location string `header:"Location" doc:"The new device's URL."`
	Body     Device
}

type listDevicesInput struct {
	Pool   string `query:"pool" doc:"Only devices in this pool." example:"android"`
	State  string `query:"state" enum:"idle,leased,offline,maintenance" doc:"Only devices in this state." example:"idle"`
	Limit  int    `query:"limit" default:"100" minimum:"1" maximum:"1000" doc:"Page size: at most this many devices." example:"100"`
	Cursor string `query:"cursor" maxLength:"512" doc:"Opaque: the next_cursor of the previous page; absent for the first page." example:"eyJuYW1lIjoicGl4ZWwtNy0wMSJ9"`
}

type updateDeviceInput struct {
	Name string `path:"name" minLength:"1" doc:"Device name." example:"pixel-7-01"`
	Body UpdateDeviceRequest
}

type deleteDeviceInput struct {
	Name  string `path:"name" minLength:"1" doc:"Device name." example:"pixel-7-01"`
	Force bool   `query:"force" doc:"Delete even if leased; the lease ends with end_reason device_removed." example:"false"`
}

type deviceOutput struct {
	Body Device
}

func (s *server) registerDevices(api huma.API) {
	tags := []string{"devices"}
	huma.Register(api, huma.Operation{
		OperationID: "createDevice", Method: http.MethodPost, Path: "/v1/devices", Tags: tags,
		Summary:       "Register a device",
		Description:   "Registers a device as idle; waiting acquires that match it are woken. Admin only.",
		DefaultStatus: http.StatusCreated, MaxBodyBytes: s.maxBody,
		Errors: []int{http.StatusForbidden, http.StatusConflict},
	}, s.createDevice)
	huma.Register(api, huma.Operation{
		OperationID: "listDevices", Method: http.MethodGet, Path: "/v1/devices", Tags: tags,
		Summary: "List devices",
		Description: "Devices by name, a page at a time: when next_cursor is present, pass it as cursor " +
			"(with the same filters) for the next page.",
	}, s.listDevices)
	huma.Register(api, huma.Operation{
		OperationID: "getDevice", Method: http.MethodGet, Path: "/v1/devices/{name}", Tags: tags,
		Summary:     "Get a device",
		Description: "The device by name, with its state and, when leased, its lease id.",
		Errors:      []int{http.StatusNotFound},
	}, s.getDevice)
	huma.Register(api, huma.Operation{
		OperationID: "updateDevice", Method: http.MethodPatch, Path: "/v1/devices/{name}", Tags: tags,
		Summary: "Change a device",
		Description: "Changes labels, address or probe, or moves the device between idle and maintenance. " +
			"A state change of a leased device is refused (409): its lease must end first. Admin only.",
		MaxBodyBytes: s.maxBody,
		Errors:       []int{http.StatusForbidden, http.StatusNotFound, http.StatusConflict},
	}, s.updateDevice)
	huma.Register(api, huma.Operation{
		OperationID: "deleteDevice", Method: http.MethodDelete, Path: "/v1/devices/{name}", Tags: tags,
		Summary: "Delete a device",
		Description: "Removes a device; its lease history stays. A leased device is refused (409) " +
			"unless force=true, which ends the lease with end_reason device_removed. Admin only.",
		DefaultStatus: http.StatusNoContent,
		Errors:        []int{http.StatusForbidden, http.StatusNotFound, http.StatusConflict},
	}, s.deleteDevice)
}

func (s *server) createDevice(ctx context.Context, in *createDeviceInput) (*createDeviceOutput, error) {
	if err := requireAdmin(ctx); err != nil {
		return nil, err
	}
	b := in.Body
	errs := checkLabels("body.labels", b.Labels)
	errs = append(errs, checkText("body.address", b.Address)...)
	if err := invalid(errs); err != nil {
		return nil, err
	}
	// Huma fills tag defaults only into a body it parsed; keep them here too
	// so the handler never depends on that.
	if b.Pool == "" {
		b.Pool = "default"
	}
	if b.Probe == "" {
		b.Probe = "tcp"
	}
	dev, err := s.alloc.CreateDevice(ctx, db.DeviceSpec{
		Name: b.Name, Pool: b.Pool, Labels: devalloctype.Labels(b.Labels), Address: b.Address, Probe: b.Probe,
	})
	if err != nil {
		return nil, s.fail(ctx, "createDevice", deviceSubject(b.Name), err)
	}
	return &createDeviceOutput{Location: deviceURL(dev.Name), Body: deviceFromDB(dev)}, nil
}

func (s *server) listDevices(ctx context.Context, in *listDevicesInput) (*struct{ Body DeviceList }, error) {
	after, err := deviceAfter(in.Cursor)
	if err != nil {
		return nil, err
	}
	page, err := s.alloc.ListDevicesPage(ctx, db.DeviceFilter{Pool: in.Pool, State: in.State, After: after, Limit: in.Limit})
	if err != nil {
		return nil, s.fail(ctx, "listDevices", "devices", err)
	}
	out := &struct{ Body DeviceList }{Body: DeviceList{
		Devices:    make([]Device, 0, len(page.Devices)),
		NextCursor: nextDeviceCursor(page.Next),
	}}
	for _, d := range page.Devices {
		out.Body.Devices = append(out.Body.Devices, deviceFromDB(d))
	}
	return out, nil
}

func (s *server) getDevice(ctx context.Context, in *getDeviceInput) (*deviceOutput, error) {
	dev, err := s.alloc.GetDevice(ctx, in.Name)
	if err != nil {
		return nil, s.fail(ctx, "getDevice", deviceSubject(in.Name), err)
	}
	return &deviceOutput{Body: deviceFromDB(dev)}, nil
}

func (s *server) updateDevice(ctx context.Context, in *updateDeviceInput) (*deviceOutput, error) {
	if err := requireAdmin(ctx); err != nil {
		return nil, err
	}
	b := in.Body
	var errs []error
	patch := db.DevicePatch{Address: b.Address, Probe: b.Probe, State: b.State, Drain: b.Drain}
	if b.Address != nil {
		errs = append(errs, checkText("body.address", *b.Address)...)
	}
	if b.Labels != nil {
		errs = append(errs, checkLabels("body.labels", *b.Labels)...)
		labels := devalloctype.Labels(*b.Labels)
		patch.Labels = &labels
	}
	if b.State != nil && b.Drain != nil {
		errs = append(errs, &huma.ErrorDetail{
			Location: "body.drain", Message: "give state or drain, not both", Value: *b.Drain,
		})
	}
	if b.Reason != nil {
		if b.State == nil && b.Drain == nil {
			// The db layer would drop it silently; say so instead.
			errs = append(errs, &huma.ErrorDetail{
				Location: "body.reason", Message: "reason is only accepted together with state or drain", Value: *b.Reason,
			})
		}
		errs = append(errs, checkText("body.reason", *b.Reason)...)
		patch.Reason = *b.Reason
	}
	if err := invalid(errs); err != nil {
		return nil, err
	}
	dev, err := s.alloc.UpdateDevice(ctx, in.Name, patch)
	if err != nil {
		return nil, s.fail(ctx, "updateDevice", deviceSubject(in.Name), err)
	}
	return &deviceOutput{Body: deviceFromDB(dev)}, nil
}

func (s *server) deleteDevice(ctx context.Context, in *deleteDeviceInput) (*struct{}, error) {
	if err := requireAdmin(ctx); err != nil {
		return nil, err
	}
	if err := s.alloc.DeleteDevice(ctx, in.Name, in.Force); err != nil {
		return nil, s.fail(ctx, "deleteDevice", deviceSubject(in.Name), err)
	}
	return nil, nil
}

func deviceSubject(name string) string { return "device " + strconv.Quote(name) }

func deviceURL(name string) string { return "/v1/devices/" + url.PathEscape(name) }
