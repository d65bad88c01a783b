package bench

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestCycleInterleavesWithTheFloor(t *testing.T) {
	in, db := startAPI(t)
	var mu sync.Mutex
	var floorCalls []int
	floor := func(_ context.Context, clients int, d time.Duration) (float64, error) {
		if d != 300*time.Millisecond {
			t.Errorf("floor run of %s, want the cycle's duration", d)
		}
		mu.Lock()
		defer mu.Unlock()
		floorCalls = append(floorCalls, clients)
		return 100 * float64(len(floorCalls)), nil
	}
	res, err := Cycle(t.Context(), CycleOptions{
		Instances: in, DB: db, Clients: 4, Devices: 6,
		Duration: 300 * time.Millisecond, Rounds: 3, Warmup: 100 * time.Millisecond,
		Floor: floor,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 {
		t.Errorf("errors: %d", res.Errors)
	}
	if len(res.RoundsCPS) != 3 || slices.Min(res.RoundsCPS) <= 0 {
		t.Errorf("rounds: %v", res.RoundsCPS)
	}
	if !slices.Equal(floorCalls, []int{4, 4, 4}) {
		t.Errorf("floor called with %v, want 4 clients in each of 3 rounds", floorCalls)
	}
	if !slices.Equal(res.RoundsRawCPS, []float64{100, 200, 300}) || res.RawCyclesPerSec != 200 {
		t.Errorf("floor rounds %v, median %v", res.RoundsRawCPS, res.RawCyclesPerSec)
	}
	if res.CyclesPerSec != Median(res.RoundsCPS) || res.Ratio != res.CyclesPerSec/200 {
		t.Errorf("cycles/s %v of %v, ratio %v", res.CyclesPerSec, res.RoundsCPS, res.Ratio)
	}
	checkLatency(t, "acquire", res.Acquire)
	checkLatency(t, "release", res.Release)
	if res.Acquire.N != res.Release.N {
		t.Errorf("%d acquires but %d releases timed", res.Acquire.N, res.Release.N)
	}
	// Wrapped: every connection to the test database counts, the API's pool
	// included.
	if res.DBConnections < 1 {
		t.Errorf("db connections: %d", res.DBConnections)
	}
	if res.Instances != 1 || res.Clients != 4 || res.Devices != 6 || res.Probe != "none" || res.Seconds != 0.3 || res.Rounds != 3 {
		t.Errorf("settings not reported: %+v", res)
	}
	checkCleanedUp(t, db)
}

func TestCycleWithoutFloorAndMoreClientsThanDevices(t *testing.T) {
	in, db := startAPI(t)
	res, err := Cycle(t.Context(), CycleOptions{
		Instances: in, DB: db, Clients: 5, Devices: 2, Probe: "tcp",
		Duration: 300 * time.Millisecond, Rounds: 1, Warmup: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 || res.CyclesPerSec <= 0 {
		t.Errorf("cycles/s %v, errors %d", res.CyclesPerSec, res.Errors)
	}
	if res.RawCyclesPerSec != 0 || res.Ratio != 0 || res.RoundsRawCPS != nil {
		t.Errorf("floor figures without a floor: %+v", res)
	}
	checkCleanedUp(t, db)
}

func TestCycleRejectsAnUnknownProbe(t *testing.T) {
	in, db := startAPI(t)
	if _, err := Cycle(t.Context(), CycleOptions{Instances: in, DB: db, Probe: "http"}); err == nil {
		t.Fatal("probe http accepted")
	}
}

func TestSweep(t *testing.T) {
	in, db := startAPI(t)
	points, err := Sweep(t.Context(), SweepOptions{
		Cycle: CycleOptions{
			Instances: in, DB: db, Devices: 4, Duration: 200 * time.Millisecond, Warmup: -1,
			Floor: func(_ context.Context, clients int, _ time.Duration) (float64, error) {
				return float64(10 * clients), nil
			},
		},
		Clients: []int{1, 3},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(points) != 2 {
		t.Fatalf("points: %+v", points)
	}
	for i, want := range []int{1, 3} {
		p := points[i]
		if p.Clients != want || p.CyclesPerSec <= 0 || p.RawCyclesPerSec != float64(10*want) ||
			p.AcquireP50 <= 0 || p.AcquireP50 > p.AcquireP99 || p.Errors != 0 {
			t.Errorf("point %d: %+v", i, p)
		}
	}
	checkCleanedUp(t, db)
}
