package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/devalloc/devalloc/httpapi/client"
)

// deviceCount is how many devices the server has.
func (s *cliServer) deviceCount(t *testing.T) int {
	t.Helper()
	limit := int64(1000)
	r, err := s.admin.ListDevicesWithResponse(t.Context(), &client.ListDevicesParams{Limit: &limit})
	if err != nil || r.StatusCode() != http.StatusOK {
		t.Fatalf("list devices: %v %s", err, r.Body)
	}
	return len(r.JSON200.Devices)
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Importing a 500-device CSV twice leaves 500 devices; the second run
// changes nothing, and a changed row updates just that device.
func TestDevicesImportCSVIsIdempotent(t *testing.T) {
	s := newCLIServer(t)
	var csv strings.Builder
	csv.WriteString("name,pool,address,probe,labels\n")
	for i := range 500 {
		fmt.Fprintf(&csv, "board-%03d,lab,10.0.%d.%d:5555,none,model=pixel;rack=r%d\n", i, i/250, i%250, i%10)
	}
	path := writeFile(t, "farm.csv", csv.String())
	r := s.cli(t, s.adminKey, "devices", "import", path)
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, "500 devices: 500 created, 0 updated, 0 unchanged, 0 failed") {
		t.Fatalf("first import: %q", r.stdout)
	}
	r = s.cli(t, s.adminKey, "devices", "import", path)
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, "500 devices: 0 created, 0 updated, 500 unchanged, 0 failed") {
		t.Fatalf("second import: %q", r.stdout)
	}
	if n := s.deviceCount(t); n != 500 {
		t.Fatalf("%d devices after importing 500 twice", n)
	}

	changed := strings.Replace(csv.String(), "board-007,lab,10.0.0.7:5555,none,model=pixel;rack=r7", "board-007,lab,10.9.9.9:5555,none,model=pixel-8;rack=r7", 1)
	r = s.cli(t, s.adminKey, "devices", "import", writeFile(t, "farm.csv", changed))
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, "0 created, 1 updated, 499 unchanged") {
		t.Fatalf("import with one changed row: %q", r.stdout)
	}
	d, err := s.admin.GetDeviceWithResponse(t.Context(), "board-007")
	if err != nil || d.JSON200.Address != "10.9.9.9:5555" || d.JSON200.Labels["model"] != "pixel-8" {
		t.Fatalf("board-007 after the update: %+v %v", d.JSON200, err)
	}
}

func TestDevicesImportYAML(t *testing.T) {
	s := newCLIServer(t)
	s.device(t, "sim-1", "sims", map[string]string{"os": "android"})
	path := writeFile(t, "farm.yaml", `
- name: sim-1
  pool: sims
  address: 10.0.0.1:5555
  probe: none
  labels: {os: android, version: "14"}
- name: sim-2
  pool: sims
  address: 10.0.0.2:5555
  probe: none
- name: board
  address: 10.0.0.3:22
`)
	r := s.cli(t, s.adminKey, "devices", "import", path, "--json")
	wantCode(t, r, 0)
	if got := strings.Join(strings.Fields(r.stdout), ""); got != `{"created":2,"failed":0,"unchanged":0,"updated":1}` {
		t.Fatalf("import: %s", r.stdout)
	}
	d, err := s.admin.GetDeviceWithResponse(t.Context(), "board")
	if err != nil || d.JSON200.Pool != "default" || d.JSON200.Probe != "tcp" {
		t.Fatalf("board took the defaults? %+v %v", d.JSON200, err)
	}
}

// A mistake anywhere in the file changes nothing; a device the server
// refuses is reported and the rest go on.
func TestDevicesImportRefusals(t *testing.T) {
	s := newCLIServer(t)
	for name, content := range map[string]string{
		"header.csv":    "name,pool,address\nd1,lab,h:1\n",
		"labels.csv":    "name,pool,address,probe,labels\nd1,lab,h:1,none,model\n",
		"twice.csv":     "name,pool,address,probe,labels\nd1,lab,h:1,none,\nd1,lab,h:2,none,\n",
		"noaddress.csv": "name,pool,address,probe,labels\nd1,lab,h:1,none,\nd2,lab,,none,\n",
		"probe.csv":     "name,pool,address,probe,labels\nd1,lab,h:1,ping,\n",
		"unknown.yaml":  "- name: d1\n  address: h:1\n  colour: red\n",
		"farm.txt":      "d1\n",
	} {
		r := s.cli(t, s.adminKey, "devices", "import", writeFile(t, name, content))
		if r.code == 0 || !strings.Contains(r.stderr, "devalloc:") {
			t.Errorf("%s: exit %d, stderr %q; want a refusal", name, r.code, r.stderr)
		}
	}
	if n := s.deviceCount(t); n != 0 {
		t.Fatalf("%d devices after refused files", n)
	}

	s.device(t, "d2", "elsewhere", nil)
	r := s.cli(t, s.adminKey, "devices", "import", writeFile(t, "farm.csv",
		"name,pool,address,probe,labels\nd1,lab,h:1,none,\nd2,lab,h:2,none,\nbad name,lab,h:3,none,\nd4,lab,h:4,none,\n"))
	wantCode(t, r, 1)
	if !strings.Contains(r.stdout, "4 devices: 2 created, 0 updated, 0 unchanged, 2 failed") ||
		!strings.Contains(r.stderr, `already registered in pool "elsewhere"`) || !strings.Contains(r.stderr, "bad name") {
		t.Fatalf("stdout %q stderr %q", r.stdout, r.stderr)
	}
	// A client key may not register devices: the import stops at once.
	r = s.cli(t, s.ciKey, "devices", "import", writeFile(t, "farm.csv", "name,pool,address,probe,labels\nd9,lab,h:9,none,\n"))
	if r.code == 0 || !strings.Contains(r.stderr, "import stopped") {
		t.Fatalf("client key: exit %d, stderr %q", r.code, r.stderr)
	}
}

// drain keeps the holder and sends the device to maintenance when its
// lease ends; undrain puts it back.
func TestDevicesDrainAndUndrain(t *testing.T) {
	s := newCLIServer(t)
	s.device(t, "board", "lab", nil)
	held := s.hold(t, "lab")
	r := s.cli(t, s.adminKey, "devices", "drain", "board", "--reason", "firmware update")
	wantCode(t, r, 0)
	if row := rowOf(t, r.stdout, "board"); row[2] != "leased (draining)" {
		t.Fatalf("after drain: %q", r.stdout)
	}
	s.release(t, held.ID)
	r = s.cli(t, s.adminKey, "devices", "--pool", "lab")
	if row := rowOf(t, r.stdout, "board"); row[2] != "maintenance" {
		t.Fatalf("after the release: %q", r.stdout)
	}
	r = s.cli(t, s.adminKey, "devices", "undrain", "board")
	wantCode(t, r, 0)
	if row := rowOf(t, r.stdout, "board"); row[2] != "idle" {
		t.Fatalf("after undrain: %q", r.stdout)
	}
	wantCode(t, s.cli(t, s.ciKey, "devices", "drain", "board"), 1) // admins only
}
