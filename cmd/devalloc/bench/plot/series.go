package plot

import (
	"cmp"
	"fmt"
	"image/color"
	"math"
	"slices"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Colours: devalloc's own figures in strong colours, reference lines (the
// bare-SQL floor, medians under a p99) in muted ones, so the eye lands on
// what the plot is about.
var (
	blue   = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	orange = color.RGBA{R: 0xd9, G: 0x5f, B: 0x02, A: 0xff}
	gray   = color.RGBA{R: 0x70, G: 0x70, B: 0x70, A: 0xff}
	green  = color.RGBA{R: 0x1b, G: 0x9e, B: 0x77, A: 0xff}
)

// series is one named line with a marker at every measured point.
type series struct {
	name   string
	xys    plotter.XYs
	color  color.Color
	glyph  draw.GlyphDrawer
	dashed bool
}

// add draws s on p with a legend entry. A series with no points is left
// out rather than drawn as an empty legend entry.
func (s series) add(p *gplot.Plot) error {
	if len(s.xys) == 0 {
		return nil
	}
	slices.SortStableFunc(s.xys, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })
	line, pts, err := plotter.NewLinePoints(s.xys)
	if err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	line.Color = s.color
	line.Width = vg.Points(1.5)
	if s.dashed {
		line.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
	}
	pts.Color = s.color
	pts.Shape = s.glyph
	pts.Radius = vg.Points(3)
	p.Add(line, pts)
	p.Legend.Add(s.name, line, pts)
	return nil
}

// distinctX counts the different x values among xys: a line needs two.
func distinctX(xys plotter.XYs) int {
	seen := map[float64]bool{}
	for _, xy := range xys {
		seen[xy.X] = true
	}
	return len(seen)
}

// fromZero makes a a value axis: it starts at zero, since rates and
// latencies read wrongly against a truncated axis, leaves headroom above
// the data for the legend (or value labels), and is labelled in round
// steps.
func fromZero(a *gplot.Axis) {
	a.Tick.Marker = valueTicks{}
	a.Min = 0
	if a.Max <= 0 || math.IsInf(a.Max, 0) {
		a.Max = 1
	}
	a.Max *= 1.25
}

// legendTopLeft puts the legend where rising lines leave space.
func legendTopLeft(p *gplot.Plot) {
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = vg.Points(6)
	p.Legend.YOffs = -vg.Points(4)
	p.Legend.Padding = vg.Points(3) // entries at the default spacing touch
}
