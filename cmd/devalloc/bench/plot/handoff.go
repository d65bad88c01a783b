package plot

import (
	"fmt"
	"strconv"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/devalloc/devalloc/cmd/devalloc/bench"
)

// handoffFigure shows the handoff latency percentiles as horizontal bars,
// labelled with their values. The report keeps percentiles, not samples,
// so there is no distribution to draw; the bars make the tail (p99, max)
// against the median visible at a glance. It returns nil without at least
// two handoffs.
func handoffFigure(r bench.Report) (*figure, error) {
	h := r.Handoff
	if h == nil || h.Handoff.N < 2 {
		return nil, nil
	}
	l := h.Handoff
	names := []string{"p50", "p90", "p99", "max"}
	vals := plotter.Values{l.P50, l.P90, l.P99, l.Max}

	bars, err := plotter.NewBarChart(vals, vg.Points(28))
	if err != nil {
		return nil, fmt.Errorf("handoff bars: %w", err)
	}
	bars.Horizontal = true
	bars.Color = blue
	bars.LineStyle.Width = 0

	// Values printed at the end of each bar: the numbers are what a
	// reader quotes, and reading them off a scale is imprecise.
	xyl := plotter.XYLabels{XYs: make(plotter.XYs, len(vals)), Labels: make([]string, len(vals))}
	for i, v := range vals {
		xyl.XYs[i] = plotter.XY{X: v, Y: float64(i)}
		xyl.Labels[i] = strconv.FormatFloat(v, 'f', -1, 64) + " ms"
	}
	labels, err := plotter.NewLabels(xyl)
	if err != nil {
		return nil, fmt.Errorf("handoff labels: %w", err)
	}
	for i := range labels.TextStyle {
		labels.TextStyle[i].Font.Size = 9
		labels.TextStyle[i].YAlign = draw.YCenter
	}
	labels.Offset = vg.Point{X: vg.Points(4)}

	title := fmt.Sprintf("%s on %s share %s, each lease held %s ms: %s",
		count(h.Waiters, "waiter"), count(h.Instances, "instance"), count(h.Devices, "device"),
		strconv.FormatFloat(h.HoldMS, 'f', -1, 64), count(h.Handoffs, "handoff"))
	p := newPanel(title, "release sent → waiter reads its 201 (ms)", "")
	p.Add(bars, labels)
	p.NominalY(names...)
	fromZero(&p.X) // headroom on the right for the value labels
	return &figure{
		title:   "devalloc: handing a released device to a waiting client",
		caption: caption(r),
		panels:  []*gplot.Plot{p},
	}, nil
}

// count is "1 device", "4 devices", "7,400 handoffs".
func count(n int, noun string) string {
	if n != 1 {
		noun += "s"
	}
	return thousands(float64(n)) + " " + noun
}
