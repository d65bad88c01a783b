package plot

import (
	"math"
	"slices"
	"strconv"
	"strings"

	gplot "gonum.org/v1/plot"
)

// maxLabelled is how many labelled ticks fit on a panel's x axis before
// the labels collide.
const maxLabelled = 10

// pointTicks labels the x values that were measured. Sweeps double their
// client counts, so on a log axis the ticks fall evenly and each label is
// a run rather than an interpolated round number. With too many values it
// falls back to powers of two.
func pointTicks(xs []float64) gplot.ConstantTicks {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	xs = slices.Compact(xs)
	if len(xs) > maxLabelled {
		var pow []float64
		for v := math.Exp2(math.Floor(math.Log2(xs[0]))); v <= xs[len(xs)-1]; v *= 2 {
			pow = append(pow, v)
		}
		for len(pow) > maxLabelled { // keep every other power
			var half []float64
			for i := 0; i < len(pow); i += 2 {
				half = append(half, pow[i])
			}
			pow = half
		}
		xs = pow
	}
	ticks := make(gplot.ConstantTicks, len(xs))
	for i, x := range xs {
		ticks[i] = gplot.Tick{Value: x, Label: thousands(x)}
	}
	return ticks
}

// decadeTicks labels each power of ten from lo to hi with minor ticks at
// 2…9 in between: a log axis with the default labelling prints 1e+06.
func decadeTicks(lo, hi float64) gplot.ConstantTicks {
	var ticks gplot.ConstantTicks
	for d := lo; d <= hi*1.0001; d *= 10 {
		ticks = append(ticks, gplot.Tick{Value: d, Label: thousands(d)})
		if d*10 > hi*1.0001 {
			break
		}
		for m := 2.0; m < 10; m++ {
			ticks = append(ticks, gplot.Tick{Value: d * m})
		}
	}
	return ticks
}

// decades returns the powers of ten that enclose [min, max]. The epsilon
// keeps an exact power (Log10(1000) may be 2.9999…) its own decade.
func decades(min, max float64) (lo, hi float64) {
	const eps = 1e-9
	return math.Pow(10, math.Floor(math.Log10(min)+eps)), math.Pow(10, math.Ceil(math.Log10(max)-eps))
}

// valueTicks labels a value axis at about five round steps (1, 2, 2.5 or 5
// times a power of ten) with thousands separators. gonum's default aims at
// three labels and prints 2500 as "2500.00"; five plain labels let a reader
// read a rate or a latency off the axis.
type valueTicks struct{}

func (valueTicks) Ticks(lo, hi float64) []gplot.Tick {
	const target = 5
	raw := (hi - lo) / target
	if !(raw > 0) || math.IsInf(raw, 0) {
		return []gplot.Tick{{Value: lo, Label: group(strconv.FormatFloat(lo, 'f', -1, 64))}}
	}
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	// The round step nearest the ideal one, on a log scale.
	step := mag
	for _, m := range []float64{2, 2.5, 5, 10} {
		if math.Abs(math.Log(m*mag/raw)) < math.Abs(math.Log(step/raw)) {
			step = m * mag
		}
	}
	// Enough decimals to tell the labels apart, and no more.
	prec := max(0, int(-math.Floor(math.Log10(step)+1e-9)))
	if r := step / math.Pow(10, -float64(prec)); math.Abs(r-math.Round(r)) > 1e-9 {
		prec++ // 0.25, 2.5: one more digit than the magnitude says
	}
	var ticks []gplot.Tick
	for i := math.Ceil(lo/step - 1e-9); i*step <= hi+step*1e-9; i++ {
		v := i * step
		if v == 0 {
			v = 0 // not -0, which Ceil gives just below zero
		}
		ticks = append(ticks, gplot.Tick{Value: v, Label: group(strconv.FormatFloat(v, 'f', prec, 64))})
		if h := v + step/2; h <= hi {
			ticks = append(ticks, gplot.Tick{Value: h}) // unlabelled minor tick
		}
	}
	return ticks
}

// thousands formats v with comma separators in its integer part.
func thousands(v float64) string {
	return group(strconv.FormatFloat(v, 'f', -1, 64))
}

// group inserts comma separators into the integer part of a decimal
// number. Anything else (exponent form, empty labels) is returned as is.
func group(s string) string {
	if s == "" || strings.ContainsAny(s, "eE") {
		return s
	}
	sign := ""
	if strings.HasPrefix(s, "-") {
		sign, s = "-", s[1:]
	}
	intPart, frac, hasFrac := strings.Cut(s, ".")
	var b strings.Builder
	for i, c := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if hasFrac {
		b.WriteString("." + frac)
	}
	return sign + b.String()
}
