package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/devalloc/devalloc/httpapi/client"
)

// runDevices is "devalloc devices [--pool P] [--state S]".
func runDevices(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("devices", "devices [--pool POOL] [--state idle|leased|offline|maintenance] [flags] | devices import FILE | devices drain|undrain NAME [--reason R]", stderr)
	var (
		cf                  clientFlags
		pool, state, reason string
	)
	cf.register(fs)
	fs.stringVar(&pool, "pool", "DEVALLOC_POOL", "", "only devices in this pool (empty: all pools)")
	fs.stringVar(&state, "state", "DEVALLOC_STATE", "", "only devices in this state: idle, leased, offline or maintenance")
	fs.stringVar(&reason, "reason", "DEVALLOC_REASON", "", "drain: why (shown as the device's state_reason)")
	positional, err := fs.parseInterleaved(args)
	if err != nil {
		return err
	}
	if len(positional) > 0 && positional[0] == "import" {
		if len(positional) != 2 {
			return usageError{error: errors.New("usage: devalloc devices import FILE (.csv with header name,pool,address,probe,labels, or .yaml)")}
		}
		return runDevicesImport(ctx, &cf, fs, positional[1], stdout, stderr)
	}
	if len(positional) > 0 && (positional[0] == "drain" || positional[0] == "undrain") {
		if len(positional) != 2 {
			return usageError{error: fmt.Errorf("usage: devalloc devices %s NAME", positional[0])}
		}
		return runDevicesDrain(ctx, &cf, fs, positional[1], positional[0] == "drain", reason, stdout)
	}
	if len(positional) > 0 {
		return usageError{error: fmt.Errorf("unexpected argument %q (usage: devalloc %s)", positional[0], fs.synopsis)}
	}
	filter := client.ListDevicesParams{}
	if pool != "" {
		filter.Pool = &pool
	}
	if state != "" {
		s := client.ListDevicesParamsState(state)
		if !s.Valid() {
			return usageError{error: fmt.Errorf("--state %q: want idle, leased, offline or maintenance", state)}
		}
		filter.State = &s
	}
	api, err := cf.connect(fs)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	devices, _, err := collect(ctx, 0, func(ctx context.Context, size int64, cursor *string) ([]client.Device, *string, error) {
		params := filter
		params.Limit, params.Cursor = &size, cursor
		r, err := api.ListDevicesWithResponse(ctx, &params)
		if err != nil {
			return nil, nil, cf.reachError(err)
		}
		if err := client.CheckResponse(r.HTTPResponse, r.Body); err != nil {
			return nil, nil, err
		}
		return r.JSON200.Devices, r.JSON200.NextCursor, nil
	})
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(stdout, client.DeviceList{Devices: devices})
	}
	return printDevices(stdout, devices)
}

// runPools is "devalloc pools".
func runPools(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pools", "pools [flags]", stderr)
	var cf clientFlags
	cf.register(fs)
	if err := fs.parse(args); err != nil {
		return err
	}
	if err := fs.noArgs(); err != nil {
		return err
	}
	api, err := cf.connect(fs)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	r, err := api.ListPoolsWithResponse(ctx)
	if err != nil {
		return cf.reachError(err)
	}
	if err := client.CheckResponse(r.HTTPResponse, r.Body); err != nil {
		return err
	}
	if cf.json {
		return printJSON(stdout, r.JSON200)
	}
	return printPools(stdout, r.JSON200.Pools)
}

// runDevicesImport is "devalloc devices import FILE": the file is read and
// checked whole first (a mistake in it changes nothing), then each device
// is created or updated to match (see importDevices).
func runDevicesImport(ctx context.Context, cf *clientFlags, fs *flagSet, path string, stdout, stderr io.Writer) error {
	devices, err := readImportFile(path)
	if err != nil {
		return err
	}
	api, err := cf.connect(fs)
	if err != nil {
		return err
	}
	n, err := importDevices(ctx, api, devices, stderr, cf.reachError)
	if err != nil {
		return fmt.Errorf("import stopped after %d created, %d updated, %d unchanged: %w", n.created, n.updated, n.unchanged, err)
	}
	if cf.json {
		err = printJSON(stdout, map[string]int{"created": n.created, "updated": n.updated, "unchanged": n.unchanged, "failed": n.failed})
	} else {
		_, err = fmt.Fprintf(stdout, "%d devices: %d created, %d updated, %d unchanged, %d failed\n", len(devices), n.created, n.updated, n.unchanged, n.failed)
	}
	if err == nil && n.failed > 0 {
		err = exitCodeError{code: 1, err: fmt.Errorf("%d of %d devices could not be imported (see above)", n.failed, len(devices))}
	}
	return err
}

// runDevicesDrain is "devalloc devices drain|undrain NAME": maintenance
// without cutting off a holder (at once when the device is not leased,
// else when its lease ends), or back into rotation.
func runDevicesDrain(ctx context.Context, cf *clientFlags, fs *flagSet, name string, on bool, reason string, stdout io.Writer) error {
	api, err := cf.connect(fs)
	if err != nil {
		return err
	}
	patch := client.UpdateDeviceRequest{Drain: &on}
	if reason != "" {
		patch.Reason = &reason
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	r, err := api.UpdateDeviceWithResponse(ctx, name, patch)
	if err != nil {
		return cf.reachError(err)
	}
	if err := client.CheckResponse(r.HTTPResponse, r.Body); err != nil {
		return err
	}
	if cf.json {
		return printJSON(stdout, r.JSON200)
	}
	return printDevices(stdout, []client.Device{*r.JSON200})
}
