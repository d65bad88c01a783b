package plot

import (
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	gplot "gonum.org/v1/plot"

	"github.com/devalloc/devalloc/cmd/devalloc/bench"
)

// sample is a hand-made report with every plotted section, shaped like a
// real run: doubling client counts, device counts in decades, the labelled
// selector measured only at some of them.
func sample() bench.Report {
	lat := func(p50 float64) *bench.Latency {
		return &bench.Latency{N: 1000, P50: p50, P90: 2 * p50, P99: 4 * p50, Max: 9 * p50}
	}
	return bench.Report{
		Date:    "2026-05-01T12:00:00Z",
		Command: "devalloc bench",
		Machine: bench.Machine{CPUs: 2, GoVersion: "go1.26.0", Postgres: "17.5", Fsync: "on", SyncCommit: "on", Autovacuum: "on"},
		Sweep: []bench.SweepPoint{
			{Clients: 1, CyclesPerSec: 410, RawCyclesPerSec: 980, AcquireP50: 1.1, AcquireP99: 2.9},
			{Clients: 2, CyclesPerSec: 790, RawCyclesPerSec: 1850, AcquireP50: 1.2, AcquireP99: 3.4},
			{Clients: 4, CyclesPerSec: 1420, RawCyclesPerSec: 3100, AcquireP50: 1.4, AcquireP99: 4.8},
			{Clients: 8, CyclesPerSec: 2150, RawCyclesPerSec: 4300, AcquireP50: 1.9, AcquireP99: 8.7},
			{Clients: 16, CyclesPerSec: 2480, RawCyclesPerSec: 4700, AcquireP50: 3.5, AcquireP99: 17.2},
			{Clients: 32, CyclesPerSec: 2510, RawCyclesPerSec: 4750, AcquireP50: 6.8, AcquireP99: 35.6},
			{Clients: 64, CyclesPerSec: 2490, RawCyclesPerSec: 4720, AcquireP50: 13.1, AcquireP99: 71.0},
		},
		Scale: []bench.ScalePoint{
			{Devices: 100, Acquire: *lat(1.1), Labeled: lat(1.2)},
			{Devices: 1000, Acquire: *lat(1.1), Labeled: lat(1.3)},
			{Devices: 10000, Acquire: *lat(1.2), Labeled: lat(1.5)},
			{Devices: 100000, Acquire: *lat(1.3), Labeled: lat(2.1)},
			{Devices: 1000000, Acquire: *lat(1.5)},
		},
		Handoff: &bench.HandoffResult{
			Instances: 2, Waiters: 64, Devices: 4, HoldMS: 5, Seconds: 10, Handoffs: 7400,
			Handoff:           bench.Latency{N: 7400, P50: 1.4, P90: 2.2, P99: 4.9, Max: 12.3},
			CommitsPerHandoff: 2,
		},
	}
}

func TestWriteAllSections(t *testing.T) {
	dir := t.TempDir()
	paths, err := Write(sample(), dir)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	want := []string{
		filepath.Join(dir, "cycles.png"),
		filepath.Join(dir, "scale.png"),
		filepath.Join(dir, "handoff.png"),
	}
	if !slices.Equal(paths, want) {
		t.Fatalf("paths = %q, want %q", paths, want)
	}
	for _, p := range paths {
		checkPNG(t, p)
	}
	// Nothing but the figures: the temporary files were renamed away.
	if got := listDir(t, dir); !slices.Equal(got, []string{"cycles.png", "handoff.png", "scale.png"}) {
		t.Errorf("dir holds %q", got)
	}
}

// checkPNG decodes path and checks it is 9×4 in at 100 dpi.
func checkPNG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	if b := img.Bounds(); b.Dx() != 900 || b.Dy() != 400 {
		t.Errorf("%s is %dx%d, want 900x400", path, b.Dx(), b.Dy())
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read dir: %v", err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteNoSections(t *testing.T) {
	r := sample()
	r.Sweep, r.Scale, r.Handoff = nil, nil, nil
	dir := filepath.Join(t.TempDir(), "out")
	paths, err := Write(r, dir)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	if len(paths) != 0 {
		t.Errorf("wrote %q for a report with no sections", paths)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("dir was created with nothing to write (stat: %v)", err)
	}
}

func TestWriteTooFewPoints(t *testing.T) {
	r := sample()
	r.Sweep = r.Sweep[:1]
	// Two scale points at one device count are still one x value.
	r.Scale = []bench.ScalePoint{r.Scale[0], r.Scale[0]}
	r.Handoff = nil
	dir := t.TempDir()
	paths, err := Write(r, dir)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	if len(paths) != 0 {
		t.Errorf("wrote %q from single points", paths)
	}
	if got := listDir(t, dir); len(got) != 0 {
		t.Errorf("dir holds %q", got)
	}
}

// Only the sections present are drawn: a sweep without a scale run still
// gets its figure, and a sweep without latencies drops that panel only.
func TestWritePartial(t *testing.T) {
	r := sample()
	r.Scale, r.Handoff = nil, nil
	for i := range r.Sweep {
		r.Sweep[i].AcquireP50, r.Sweep[i].AcquireP99, r.Sweep[i].RawCyclesPerSec = 0, 0, 0
	}
	dir := t.TempDir()
	paths, err := Write(r, dir)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	if want := []string{filepath.Join(dir, "cycles.png")}; !slices.Equal(paths, want) {
		t.Fatalf("paths = %q, want %q", paths, want)
	}
	checkPNG(t, paths[0])
}

func TestWriteUnwritableDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// dir lies under a regular file, so it cannot be created.
	if _, err := Write(sample(), filepath.Join(file, "out")); err == nil {
		t.Fatal("Write into a path under a file succeeded")
	}
}

func TestCaption(t *testing.T) {
	if got, want := caption(sample()), "2026-05-01T12:00:00Z · 2 CPUs · PostgreSQL 17.5 · fsync on, synchronous_commit on, autovacuum on"; got != want {
		t.Errorf("caption = %q, want %q", got, want)
	}
	if got := caption(bench.Report{}); got != "date and machine not recorded" {
		t.Errorf("empty caption = %q", got)
	}
}

func TestThousands(t *testing.T) {
	for in, want := range map[float64]string{
		0: "0", 100: "100", 1000: "1,000", 1e6: "1,000,000", 12345.5: "12,345.5", -2500: "-2,500",
	} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%v) = %q, want %q", in, got, want)
		}
	}
	if got := group("1e+06"); got != "1e+06" {
		t.Errorf("group left exponent form as %q", got)
	}
}

// The sample figures for eyeballing: PLOT_SAMPLE_DIR=/tmp/plot-sample.
func TestRenderSample(t *testing.T) {
	dir := os.Getenv("PLOT_SAMPLE_DIR")
	if dir == "" {
		t.Skip("PLOT_SAMPLE_DIR not set")
	}
	paths, err := Write(sample(), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(paths)
}

func TestValueTicks(t *testing.T) {
	for _, c := range []struct {
		lo, hi float64
		want   []string
	}{
		{0, 6000, []string{"0", "1,000", "2,000", "3,000", "4,000", "5,000", "6,000"}},
		{0, 3.1, []string{"0.0", "0.5", "1.0", "1.5", "2.0", "2.5", "3.0"}},
		{0, 11, []string{"0", "2", "4", "6", "8", "10"}},
		{0, 87.5, []string{"0", "20", "40", "60", "80"}},
		{0, 0.9, []string{"0.0", "0.2", "0.4", "0.6", "0.8"}},
	} {
		var got []string
		for _, tk := range (valueTicks{}).Ticks(c.lo, c.hi) {
			if tk.Label != "" {
				got = append(got, tk.Label)
			}
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("ticks(%v, %v) = %q, want %q", c.lo, c.hi, got, c.want)
		}
	}
}

func TestAxisTicks(t *testing.T) {
	labels := func(ts []gplot.Tick) (out []string) {
		for _, tk := range ts {
			if tk.Label != "" {
				out = append(out, tk.Label)
			}
		}
		return out
	}
	if got, want := labels(decadeTicks(100, 1e6)), []string{"100", "1,000", "10,000", "100,000", "1,000,000"}; !slices.Equal(got, want) {
		t.Errorf("decade labels = %q, want %q", got, want)
	}
	if got, want := labels(pointTicks([]float64{8, 1, 2, 4, 4})), []string{"1", "2", "4", "8"}; !slices.Equal(got, want) {
		t.Errorf("client labels = %q, want %q", got, want)
	}
	// Too many client counts to label each: powers of two, at most ten.
	var many []float64
	for c := 1; c <= 500; c += 7 {
		many = append(many, float64(c))
	}
	if got := labels(pointTicks(many)); len(got) > maxLabelled || got[0] != "1" {
		t.Errorf("labels for %d counts = %q", len(many), got)
	}
}

// A value gonum cannot place is an error naming the figure, not a panic
// or a silently wrong image.
func TestWriteNaN(t *testing.T) {
	r := sample()
	r.Sweep[2].CyclesPerSec = math.NaN()
	_, err := Write(r, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "cycles.png") {
		t.Fatalf("Write with NaN: err = %v", err)
	}
}

func TestDecades(t *testing.T) {
	for _, c := range []struct{ min, max, lo, hi float64 }{
		{100, 1e6, 100, 1e6},
		{1000, 1000000, 1000, 1e6},
		{150, 50000, 100, 1e5},
	} {
		if lo, hi := decades(c.min, c.max); lo != c.lo || hi != c.hi {
			t.Errorf("decades(%v, %v) = %v, %v, want %v, %v", c.min, c.max, lo, hi, c.lo, c.hi)
		}
	}
}
