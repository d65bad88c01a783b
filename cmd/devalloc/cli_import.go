package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/devalloc/devalloc/httpapi/client"
)

// importedDevice is one device of an import file.
type importedDevice struct {
	Name    string            `yaml:"name"`
	Pool    string            `yaml:"pool"`
	Address string            `yaml:"address"`
	Probe   string            `yaml:"probe"`
	Labels  map[string]string `yaml:"labels"`
	// where is the device's place in the file, for messages.
	where string
}

// csvHeader is the header an import CSV must have (in any order).
var csvHeader = []string{"name", "pool", "address", "probe", "labels"}

// readImportFile reads devices from a CSV (header name,pool,address,probe,
// labels; labels as k=v;k=v) or YAML (a list of {name, pool, address,
// probe, labels}) file, by its extension, and checks what can be checked
// without the server. Any mistake fails the whole file, before anything
// is sent.
func readImportFile(path string) ([]importedDevice, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var devices []importedDevice
	switch strings.ToLower(filepath.Ext(path)) {
	case ".csv":
		devices, err = parseImportCSV(data)
	case ".yaml", ".yml":
		devices, err = parseImportYAML(data)
	default:
		return nil, usageError{error: fmt.Errorf("%s: want a .csv, .yaml or .yml file", path)}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return devices, checkImported(devices)
}

func parseImportCSV(data []byte) ([]importedDevice, error) {
	r := csv.NewReader(bytes.NewReader(data))
	r.TrimLeadingSpace = true
	header, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.ToLower(strings.TrimSpace(h))] = i
	}
	if len(header) != len(csvHeader) || len(col) != len(csvHeader) {
		return nil, fmt.Errorf("header %q: want the columns %s", strings.Join(header, ","), strings.Join(csvHeader, ","))
	}
	for _, h := range csvHeader {
		if _, ok := col[h]; !ok {
			return nil, fmt.Errorf("header %q: no column %q (want %s)", strings.Join(header, ","), h, strings.Join(csvHeader, ","))
		}
	}
	var out []importedDevice
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		line, _ := r.FieldPos(0)
		d := importedDevice{
			Name: rec[col["name"]], Pool: rec[col["pool"]], Address: rec[col["address"]], Probe: rec[col["probe"]],
			where: fmt.Sprintf("line %d", line),
		}
		if d.Labels, err = parseLabelList(rec[col["labels"]]); err != nil {
			return nil, fmt.Errorf("%s: labels: %w", d.where, err)
		}
		out = append(out, d)
	}
}

// parseLabelList reads "k=v;k=v" (empty: no labels).
func parseLabelList(s string) (map[string]string, error) {
	labels := map[string]string{}
	for pair := range strings.SplitSeq(s, ";") {
		if strings.TrimSpace(pair) == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("want key=value, got %q", pair)
		}
		if _, dup := labels[k]; dup {
			return nil, fmt.Errorf("label %q given twice", k)
		}
		labels[k] = strings.TrimSpace(v)
	}
	return labels, nil
}

func parseImportYAML(data []byte) ([]importedDevice, error) {
	var out []importedDevice
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&out); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	for i := range out {
		out[i].where = fmt.Sprintf("device %d", i+1)
		if out[i].Labels == nil {
			out[i].Labels = map[string]string{}
		}
	}
	return out, nil
}

// checkImported fills in defaults and refuses what the server would: a
// missing name or address, an unknown probe, a name given twice.
func checkImported(devices []importedDevice) error {
	seen := map[string]string{}
	for i := range devices {
		d := &devices[i]
		d.Name, d.Pool, d.Address, d.Probe = strings.TrimSpace(d.Name), strings.TrimSpace(d.Pool), strings.TrimSpace(d.Address), strings.TrimSpace(d.Probe)
		if d.Pool == "" {
			d.Pool = "default"
		}
		if d.Probe == "" {
			d.Probe = "tcp"
		}
		switch {
		case d.Name == "":
			return fmt.Errorf("%s: no name", d.where)
		case d.Address == "":
			return fmt.Errorf("%s (%s): no address", d.where, d.Name)
		case !client.CreateDeviceRequestProbe(d.Probe).Valid():
			return fmt.Errorf("%s (%s): probe %q: want tcp, http or none", d.where, d.Name, d.Probe)
		}
		if first, dup := seen[d.Name]; dup {
			return fmt.Errorf("%s: device %q is also at %s", d.where, d.Name, first)
		}
		seen[d.Name] = d.where
	}
	return nil
}

// importCounts is what an import did.
type importCounts struct{ created, updated, unchanged, failed int }

// importDevices makes the server's devices match the file's: each device
// missing is created, each that differs in labels, address or probe is
// updated, the rest are left alone; so importing the same file twice
// changes nothing the second time. A device in another pool is reported,
// not moved (a device keeps its pool). Failures are printed and counted;
// the others go on. reach explains a request that got no answer.
func importDevices(ctx context.Context, api *client.ClientWithResponses, devices []importedDevice, stderr io.Writer, reach func(error) error) (importCounts, error) {
	var n importCounts
	fail := func(d importedDevice, err error) {
		n.failed++
		fmt.Fprintf(stderr, "devalloc: %s (%s): %s\n", d.where, d.Name, oneLine(err))
	}
	for _, d := range devices {
		if err := importOne(ctx, api, d, &n, fail, reach); err != nil {
			return n, err
		}
	}
	return n, nil
}

// importOne creates or updates one device (its requests bounded by
// requestTimeout). A failure of this device alone is passed to fail; an
// error ends the whole import (no answer, or an answer every device would
// get: 401, 403, 503).
func importOne(ctx context.Context, api *client.ClientWithResponses, d importedDevice, n *importCounts, fail func(importedDevice, error), reach func(error) error) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	got, err := api.GetDeviceWithResponse(ctx, d.Name)
	if err != nil {
		return reach(err)
	}
	switch got.StatusCode() {
	case http.StatusNotFound:
		probe := client.CreateDeviceRequestProbe(d.Probe)
		r, err := api.CreateDeviceWithResponse(ctx, client.CreateDeviceRequest{
			Name: d.Name, Pool: &d.Pool, Address: d.Address, Probe: &probe, Labels: &d.Labels,
		})
		if err != nil {
			return reach(err)
		}
		if err := client.CheckResponse(r.HTTPResponse, r.Body); err != nil {
			return failOrStop(d, r.StatusCode(), err, fail)
		}
		n.created++
	case http.StatusOK:
		cur := got.JSON200
		if cur.Pool != d.Pool {
			fail(d, fmt.Errorf("already registered in pool %q, the file says %q (delete it to move it)", cur.Pool, d.Pool))
			return nil
		}
		if cur.Address == d.Address && string(cur.Probe) == d.Probe && maps.Equal(cur.Labels, d.Labels) {
			n.unchanged++
			return nil
		}
		probe := client.UpdateDeviceRequestProbe(d.Probe)
		r, err := api.UpdateDeviceWithResponse(ctx, d.Name, client.UpdateDeviceRequest{Address: &d.Address, Probe: &probe, Labels: &d.Labels})
		if err != nil {
			return reach(err)
		}
		if err := client.CheckResponse(r.HTTPResponse, r.Body); err != nil {
			return failOrStop(d, r.StatusCode(), err, fail)
		}
		n.updated++
	default:
		if err := client.CheckResponse(got.HTTPResponse, got.Body); err != nil {
			return err
		}
		return fmt.Errorf("get device %q: unexpected status %d", d.Name, got.StatusCode())
	}
	return nil
}

// failOrStop reports a device the server refused, or, for an answer every
// device would get (no key, not an admin, the database unavailable), ends
// the import.
func failOrStop(d importedDevice, status int, err error, fail func(importedDevice, error)) error {
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusServiceUnavailable:
		return err
	}
	fail(d, err)
	return nil
}
