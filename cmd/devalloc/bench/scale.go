package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// ScaleOptions configure Scale. Zero fields take the defaults named.
type ScaleOptions struct {
	// Instances are the servers; only the first is used (one client).
	Instances *Instances
	// DB is the instances' database: the devices are loaded through it.
	DB *pgxpool.Pool
	// Counts are the pool sizes measured, in any order; default 100,
	// 10,000 and 1,000,000.
	Counts []int
	// Cycles are the measured acquire → release cycles per pool size and
	// selector; default 500.
	Cycles int
	// Warmup cycles run unmeasured before each measurement; default 50.
	Warmup int
	// Progress shows the phases; nil for none.
	Progress *Progress
}

// DefaultScaleCounts are the pool sizes Scale measures by default.
var DefaultScaleCounts = []int{100, 10_000, 1_000_000}

func (o ScaleOptions) withDefaults() ScaleOptions {
	if len(o.Counts) == 0 {
		o.Counts = DefaultScaleCounts
	}
	o.Counts = slices.Clone(o.Counts)
	slices.Sort(o.Counts)
	o.Counts = slices.Compact(o.Counts)
	o.Cycles = cmpOr(o.Cycles, 500)
	o.Warmup = cmpOr(o.Warmup, 50)
	return o
}

// bigDelete is the pool size past which Scale vacuums the table after
// deleting its devices.
const bigDelete = 100_000

// Scale measures acquire latency against the size of a pool: one client,
// acquire → release in sequence, first for any device of the pool, then
// for a label selector that 0.1 % of the devices match. The pool grows
// from one count to the next (devices loaded with SQL, then ANALYZE), and
// is deleted at the end.
func Scale(ctx context.Context, o ScaleOptions) ([]ScalePoint, error) {
	o = o.withDefaults()
	if o.Instances == nil || o.Instances.Len() == 0 || o.DB == nil {
		return nil, errors.New("scale: Instances and DB are required")
	}
	if o.Counts[0] < 1 {
		return nil, fmt.Errorf("scale: device count %d: want at least 1", o.Counts[0])
	}
	s := &scaleRun{o: o, c: newClient(o.Instances.Key(), 1), pool: newPoolName("scale"), base: o.Instances.URL(0)}
	defer s.c.close()
	points, err := s.measure(ctx)
	o.Progress.Begin("scale: deleting the devices", 0, nil)
	if derr := dropPool(o.DB, s.pool); err == nil {
		err = derr
	}
	if err == nil && s.loaded >= bigDelete {
		err = vacuumDevices(ctx, o.DB)
	}
	o.Progress.End()
	if err != nil {
		return nil, fmt.Errorf("scale: %w", err)
	}
	return points, nil
}

// scaleRun is one Scale scenario.
type scaleRun struct {
	o      ScaleOptions
	c      *client
	pool   string
	base   string
	loaded int // devices in the pool so far
}

func (s *scaleRun) measure(ctx context.Context) ([]ScalePoint, error) {
	anyBody := encode(acquireRequest{Pool: s.pool, TTLSeconds: 300, Holder: "devalloc-bench"})
	labeledBody := encode(acquireRequest{Pool: s.pool, Labels: map[string]string{"model": rareModel}, TTLSeconds: 300, Holder: "devalloc-bench"})
	var points []ScalePoint
	for _, count := range s.o.Counts {
		if err := s.grow(ctx, count); err != nil {
			return nil, err
		}
		p := ScalePoint{Devices: count}
		var err error
		if p.Acquire, err = s.cycles(ctx, fmt.Sprintf("scale %d devices", count), anyBody); err != nil {
			return nil, err
		}
		labeled, err := s.cycles(ctx, fmt.Sprintf("scale %d devices, labeled", count), labeledBody)
		if err != nil {
			return nil, err
		}
		p.Labeled = &labeled
		points = append(points, p)
	}
	return points, nil
}

// grow loads devices until the pool has count.
func (s *scaleRun) grow(ctx context.Context, count int) error {
	var done atomic.Int64
	done.Store(int64(s.loaded))
	s.o.Progress.Begin(fmt.Sprintf("scale: loading %d devices", count), 0, func() string {
		return fmt.Sprintf("%d/%d loaded", done.Load(), count)
	})
	defer s.o.Progress.End()
	if err := insertScaleDevices(ctx, s.o.DB, s.pool, s.loaded, count, func(n int) { done.Store(int64(n)) }); err != nil {
		return err
	}
	s.loaded = count
	return nil
}

// cycles times the acquires of Warmup + Cycles sequential acquire →
// release cycles, keeping the last Cycles.
func (s *scaleRun) cycles(ctx context.Context, label string, body []byte) (Latency, error) {
	var n atomic.Int64
	s.o.Progress.Begin(label, 0, func() string {
		return fmt.Sprintf("%d/%d cycles", n.Load(), s.o.Warmup+s.o.Cycles)
	})
	defer s.o.Progress.End()
	samples := make([]time.Duration, 0, s.o.Cycles)
	for i := range s.o.Warmup + s.o.Cycles {
		t0 := time.Now()
		lease, err := s.c.acquire(ctx, s.base, body)
		d := time.Since(t0)
		if err != nil {
			return Latency{}, fmt.Errorf("%s: %w", label, err)
		}
		if err := releaseAnyway(ctx, s.c, s.base, lease.ID); err != nil {
			return Latency{}, fmt.Errorf("%s: %w", label, err)
		}
		if i >= s.o.Warmup {
			samples = append(samples, d)
		}
		n.Add(1)
	}
	return Summarize(samples), nil
}
