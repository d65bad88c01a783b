package bench

import (
	"context"
	"fmt"
	"slices"
)

// SweepOptions configure Sweep.
type SweepOptions struct {
	// Cycle is the scenario run at each client count: its Clients and
	// Rounds are ignored (one round per count), its Duration and Warmup
	// apply to each count, its Floor (if set) runs at each count too.
	Cycle CycleOptions
	// Clients are the client counts; default 1, 2, 4, 8, 16, 32, 64.
	Clients []int
}

// DefaultSweepClients are the client counts Sweep uses by default.
var DefaultSweepClients = []int{1, 2, 4, 8, 16, 32, 64}

// Sweep runs the cycle scenario once at each client count on one pool of
// devices (registered once), each devalloc run followed by the floor at
// the same count, for a throughput-against-concurrency plot.
func Sweep(ctx context.Context, o SweepOptions) ([]SweepPoint, error) {
	counts := o.Clients
	if len(counts) == 0 {
		counts = DefaultSweepClients
	}
	co := o.Cycle.withDefaults()
	if err := co.check(); err != nil {
		return nil, fmt.Errorf("sweep: %w", err)
	}
	b, err := newCycleBench(ctx, co, slices.Max(counts))
	if err != nil {
		return nil, fmt.Errorf("sweep: %w", err)
	}
	points, err := b.sweep(ctx, counts)
	if cerr := b.close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("sweep: %w", err)
	}
	return points, nil
}

func (b *cycleBench) sweep(ctx context.Context, counts []int) ([]SweepPoint, error) {
	var points []SweepPoint
	for _, clients := range counts {
		if clients < 1 {
			return nil, fmt.Errorf("client count %d: want at least 1", clients)
		}
		if err := b.warmup(ctx, clients); err != nil {
			return nil, err
		}
		var acq, rel Recorder
		label := fmt.Sprintf("sweep %d clients", clients)
		st, err := b.run(ctx, label, clients, b.o.Duration, &acq, &rel)
		if err != nil {
			return nil, err
		}
		p := SweepPoint{Clients: clients, CyclesPerSec: st.perSec(), Errors: st.errors}
		lat := acq.Summary()
		p.AcquireP50, p.AcquireP99 = lat.P50, lat.P99
		if b.o.Floor != nil {
			if p.RawCyclesPerSec, err = b.floor(ctx, clients); err != nil {
				return nil, err
			}
		}
		points = append(points, p)
	}
	return points, nil
}
