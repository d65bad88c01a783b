package plot

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"

	stdfont "golang.org/x/image/font"
	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Figure geometry: README images are shown about 900 px wide, so 9×4 in at
// 100 dpi is drawn 1:1 and the default font sizes stay legible.
const (
	figWidth  = 9 * vg.Inch
	figHeight = 4 * vg.Inch
	figDPI    = 100
)

// figure is one PNG: a title and caption across the top, then its panels
// side by side, aligned so their axes line up.
type figure struct {
	title   string
	caption string
	panels  []*gplot.Plot
}

// newPanel is a plot with the styling every panel shares.
func newPanel(title, xLabel, yLabel string) *gplot.Plot {
	p := gplot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = 11
	p.X.Label.Text = xLabel
	p.Y.Label.Text = yLabel
	p.X.Label.TextStyle.Font.Size = 10
	p.Y.Label.TextStyle.Font.Size = 10
	p.X.Tick.Label.Font.Size = 9
	p.Y.Tick.Label.Font.Size = 9
	p.Legend.TextStyle.Font.Size = 9
	return p
}

// render draws the figure onto a fresh image canvas.
func (f *figure) render() *vgimg.Canvas {
	img := vgimg.NewWith(vgimg.UseWH(figWidth, figHeight), vgimg.UseDPI(figDPI))
	dc := draw.New(img)

	// The header is drawn directly rather than as a panel title so that a
	// two-panel figure has one title and one caption spanning both.
	const margin = 3 * vg.Millimeter
	titleStyle := headerStyle(14, color.Black)
	titleStyle.Font.Weight = stdfont.WeightBold
	captionStyle := headerStyle(9, color.Gray{Y: 0x50})
	top := dc.Max.Y - margin
	center := (dc.Min.X + dc.Max.X) / 2
	dc.FillText(titleStyle, vg.Point{X: center, Y: top}, f.title)
	top -= titleStyle.Height(f.title) + vg.Points(3)
	dc.FillText(captionStyle, vg.Point{X: center, Y: top}, f.caption)
	top -= captionStyle.Height(f.caption) + vg.Points(6)

	body := draw.Crop(dc, 0, 0, 0, top-dc.Max.Y)
	tiles := draw.Tiles{
		Rows:      1,
		Cols:      len(f.panels),
		PadX:      8 * vg.Millimeter,
		PadLeft:   margin,
		PadRight:  margin,
		PadBottom: margin,
	}
	canvases := gplot.Align([][]*gplot.Plot{f.panels}, tiles, body)
	for i, p := range f.panels {
		p.Draw(canvases[0][i])
	}
	return img
}

func headerStyle(size vg.Length, c color.Color) text.Style {
	return text.Style{
		Color:   c,
		Font:    font.From(gplot.DefaultFont, size),
		XAlign:  draw.XCenter,
		YAlign:  draw.YTop,
		Handler: gplot.DefaultTextHandler,
	}
}

// save renders the figure and writes it to path via a temporary file in
// the same directory, so a failed run never leaves a truncated PNG where
// the README points.
func (f *figure) save(path string) (err error) {
	img := f.render()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".plot-*.png")
	if err != nil {
		return fmt.Errorf("create temporary file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(tmp); err != nil {
		return fmt.Errorf("encode png: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	// CreateTemp makes the file 0600; a README image should be readable.
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename into place: %w", err)
	}
	return nil
}
