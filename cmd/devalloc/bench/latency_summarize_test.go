package bench

import (
	"testing"
	"time"
)

func TestSummarizeNearestRank(t *testing.T) {
	// 1..100 ms, shuffled: nearest rank gives the p-th value exactly.
	var s []time.Duration
	for i := range 100 {
		s = append(s, time.Duration((i*37)%100+1)*time.Millisecond)
	}
	got := Summarize(s)
	want := Latency{N: 100, P50: 50, P90: 90, P99: 99, Max: 100}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if one := Summarize([]time.Duration{1500 * time.Microsecond}); one != (Latency{N: 1, P50: 1.5, P90: 1.5, P99: 1.5, Max: 1.5}) {
		t.Errorf("one sample: %+v", one)
	}
	if none := Summarize(nil); none != (Latency{}) {
		t.Errorf("no samples: %+v", none)
	}
}

func TestRecorderAndMedian(t *testing.T) {
	var r Recorder
	r.Add(3 * time.Millisecond)
	r.Add(time.Millisecond)
	if r.Len() != 2 || r.Summary().P50 != 1 || r.Summary().Max != 3 {
		t.Errorf("recorder: %d, %+v", r.Len(), r.Summary())
	}
	for _, tc := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := Median(tc.in); got != tc.want {
			t.Errorf("Median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
