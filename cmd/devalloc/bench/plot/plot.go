// Package plot turns a bench.Report into the PNG figures shown in the
// README. Each figure carries the run's date and machine in its caption, so
// an image copied on its own still says where its numbers came from.
package plot

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/devalloc/devalloc/cmd/devalloc/bench"
)

// Write renders, into dir, one PNG per plottable section of r and returns
// the paths it wrote, in a fixed order (cycles.png, scale.png,
// handoff.png). A section that is absent, or has too few points to draw a
// line, is skipped without error; dir is created only if something is
// written. On error the paths already written are returned with it.
func Write(r bench.Report, dir string) ([]string, error) {
	builders := []struct {
		name  string
		build func(bench.Report) (*figure, error)
	}{
		{"cycles.png", cyclesFigure},
		{"scale.png", scaleFigure},
		{"handoff.png", handoffFigure},
	}
	var written []string
	for _, b := range builders {
		f, err := b.build(r)
		if err != nil {
			return written, fmt.Errorf("plot %s: %w", b.name, err)
		}
		if f == nil {
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return written, fmt.Errorf("plot %s: %w", b.name, err)
		}
		path := filepath.Join(dir, b.name)
		if err := f.save(path); err != nil {
			return written, fmt.Errorf("plot %s: %w", b.name, err)
		}
		written = append(written, path)
	}
	return written, nil
}

// caption is the provenance line printed under every figure's title:
// figures from a laptop with fsync off and from a server are not
// comparable, and the image is what people see.
func caption(r bench.Report) string {
	var parts []string
	if r.Date != "" {
		parts = append(parts, r.Date)
	}
	if m := r.Machine; m.CPUs > 0 {
		parts = append(parts, fmt.Sprintf("%d CPUs", m.CPUs))
	}
	if v := r.Machine.Postgres; v != "" {
		parts = append(parts, "PostgreSQL "+v)
	}
	var dur []string
	if v := r.Machine.Fsync; v != "" {
		dur = append(dur, "fsync "+v)
	}
	if v := r.Machine.SyncCommit; v != "" {
		dur = append(dur, "synchronous_commit "+v)
	}
	if v := r.Machine.Autovacuum; v != "" {
		dur = append(dur, "autovacuum "+v)
	}
	if len(dur) > 0 {
		parts = append(parts, strings.Join(dur, ", "))
	}
	if len(parts) == 0 {
		return "date and machine not recorded"
	}
	return strings.Join(parts, " · ")
}
