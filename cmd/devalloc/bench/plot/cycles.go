package plot

import (
	"fmt"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg/draw"

	"github.com/devalloc/devalloc/cmd/devalloc/bench"
)

// cyclesFigure is the sweep: cycle rate against clients (devalloc and
// the bare-SQL floor) beside acquire latency against clients. It returns
// nil when the sweep has fewer than two client counts.
func cyclesFigure(r bench.Report) (*figure, error) {
	var rate, floor, p99, p50 plotter.XYs
	var clients []float64
	for _, s := range r.Sweep {
		if s.Clients <= 0 { // cannot sit on a log axis, and means no run
			continue
		}
		x := float64(s.Clients)
		clients = append(clients, x)
		rate = append(rate, plotter.XY{X: x, Y: s.CyclesPerSec})
		// A zero floor means the raw run was not done at that count; a
		// zero latency, that no acquire completed. Neither is a measurement.
		if s.RawCyclesPerSec > 0 {
			floor = append(floor, plotter.XY{X: x, Y: s.RawCyclesPerSec})
		}
		if s.AcquireP99 > 0 {
			p99 = append(p99, plotter.XY{X: x, Y: s.AcquireP99})
		}
		if s.AcquireP50 > 0 {
			p50 = append(p50, plotter.XY{X: x, Y: s.AcquireP50})
		}
	}
	if distinctX(rate) < 2 {
		return nil, nil
	}

	ratePanel := newPanel("Acquire–release cycle rate", "concurrent clients", "cycles/s")
	for _, s := range []series{
		{name: "devalloc over HTTP", xys: rate, color: blue, glyph: draw.CircleGlyph{}},
		{name: "bare-SQL floor", xys: floor, color: gray, glyph: draw.TriangleGlyph{}, dashed: true},
	} {
		if err := s.add(ratePanel); err != nil {
			return nil, fmt.Errorf("cycle rate: %w", err)
		}
	}

	latPanel := newPanel("Acquire latency", "concurrent clients", "acquire latency (ms)")
	for _, s := range []series{
		{name: "p99", xys: p99, color: orange, glyph: draw.CircleGlyph{}},
		{name: "p50", xys: p50, color: gray, glyph: draw.SquareGlyph{}, dashed: true},
	} {
		if err := s.add(latPanel); err != nil {
			return nil, fmt.Errorf("acquire latency: %w", err)
		}
	}

	panels := []*gplot.Plot{ratePanel}
	if len(p99)+len(p50) > 0 {
		panels = append(panels, latPanel)
	}
	for _, p := range panels {
		// Client counts double from run to run; a log axis spaces them
		// evenly instead of crowding the small counts into the corner.
		p.X.Scale = gplot.LogScale{}
		p.X.Tick.Marker = pointTicks(clients)
		fromZero(&p.Y)
		legendTopLeft(p)
	}
	return &figure{
		title:   "devalloc: acquire → release cycles against concurrent clients",
		caption: caption(r),
		panels:  panels,
	}, nil
}
