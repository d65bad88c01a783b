package bench

import (
	"slices"
	"sync"
	"time"
)

// Recorder collects durations from many goroutines. Runs are bounded in
// time, so keeping every sample (8 bytes each) is cheap and exact.
type Recorder struct {
	mu      sync.Mutex
	samples []time.Duration
}

// Add records one duration.
func (r *Recorder) Add(d time.Duration) {
	r.mu.Lock()
	r.samples = append(r.samples, d)
	r.mu.Unlock()
}

// Len is the number of samples so far.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.samples)
}

// Summary returns the percentiles of the samples so far.
func (r *Recorder) Summary() Latency {
	r.mu.Lock()
	s := slices.Clone(r.samples)
	r.mu.Unlock()
	return Summarize(s)
}

// Summarize returns the percentiles of samples (nearest rank).
func Summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	slices.Sort(samples)
	at := func(p float64) float64 {
		i := int(p*float64(len(samples))+0.5) - 1
		i = min(max(i, 0), len(samples)-1)
		return ms(samples[i])
	}
	return Latency{N: len(samples), P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: ms(samples[len(samples)-1])}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Median is the median of xs (0 for none).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
