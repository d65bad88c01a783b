package plot

import (
	"fmt"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg/draw"

	"github.com/devalloc/devalloc/cmd/devalloc/bench"
)

// scaleFigure is acquire p50 against the number of registered devices,
// for any device and for a selector matching 0.1 % of them. It returns nil
// when fewer than two device counts were measured.
func scaleFigure(r bench.Report) (*figure, error) {
	var anyDev, labeled plotter.XYs
	for _, s := range r.Scale {
		if s.Devices <= 0 { // cannot sit on a log axis
			continue
		}
		x := float64(s.Devices)
		anyDev = append(anyDev, plotter.XY{X: x, Y: s.Acquire.P50})
		if s.Labeled != nil {
			labeled = append(labeled, plotter.XY{X: x, Y: s.Labeled.P50})
		}
	}
	if distinctX(anyDev) < 2 {
		return nil, nil
	}

	p := newPanel("Acquire p50 against registered devices", "registered devices", "acquire p50 (ms)")
	for _, s := range []series{
		{name: "any device", xys: anyDev, color: blue, glyph: draw.CircleGlyph{}},
		{name: "0.1 % label selector", xys: labeled, color: green, glyph: draw.SquareGlyph{}, dashed: true},
	} {
		if err := s.add(p); err != nil {
			return nil, fmt.Errorf("scale: %w", err)
		}
	}
	// Device counts span decades (100 … 1,000,000); the axis runs from
	// the decade below the smallest to the decade above the largest so
	// every labelled tick is a round power of ten.
	lo, hi := decades(p.X.Min, p.X.Max)
	p.X.Scale = gplot.LogScale{}
	p.X.Min, p.X.Max = lo, hi
	p.X.Tick.Marker = decadeTicks(lo, hi)
	fromZero(&p.Y)
	legendTopLeft(p)
	return &figure{
		title:   "devalloc: acquire latency as the device table grows",
		caption: caption(r),
		panels:  []*gplot.Plot{p},
	}, nil
}
