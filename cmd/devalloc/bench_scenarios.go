package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/cmd/devalloc/bench"
	"github.com/devalloc/devalloc/cmd/devalloc/bench/rawsql"
)

// benchRun runs scenarios into one report.
type benchRun struct {
	cfg      benchConfig
	db       *pgxpool.Pool
	progress *bench.Progress
	log      *slog.Logger
}

// instances starts n fresh instances for one scenario (each scenario gets
// its own, so memory and connections are its own), or wraps --url.
// extra are more serve flags.
func (b *benchRun) instances(ctx context.Context, n int, extra ...string) (*bench.Instances, error) {
	if b.cfg.urls != "" {
		return bench.Wrap(b.cfg.key, strings.Split(b.cfg.urls, ",")...), nil
	}
	return bench.Spawn(ctx, bench.SpawnOptions{
		Binary:      b.cfg.binary,
		N:           n,
		DatabaseURL: b.cfg.databaseURL,
		MaxConns:    b.cfg.maxConns,
		Args:        extra,
	})
}

// floor is the bare-SQL acquire+release cycle on the same database.
func (b *benchRun) floor(ctx context.Context, clients int, d time.Duration) (float64, error) {
	return rawsql.Floor(ctx, b.cfg.databaseURL, clients, b.cfg.devices, d)
}

// settle starts each scenario from the same state: the previous one's
// dirty pages flushed (a checkpoint landing mid-run would stall its
// commits) and its dead rows vacuumed. Both are best effort: CHECKPOINT
// needs a superuser or pg_checkpoint.
func (b *benchRun) settle(ctx context.Context) {
	for _, stmt := range []string{"VACUUM (ANALYZE) devalloc.devices, devalloc.leases", "CHECKPOINT"} {
		if _, err := b.db.Exec(ctx, stmt); err != nil {
			b.log.Warn("could not settle the database between scenarios", "statement", stmt, "err", err)
		}
	}
}

func (b *benchRun) scenario(ctx context.Context, name string, r *bench.Report) (err error) {
	c := b.cfg
	if name != "scale-after-load" {
		b.settle(ctx)
	}
	switch name {
	case "baselines":
		r.Baselines, err = rawsql.Baselines(ctx, c.databaseURL, c.clients, c.devices, c.sqlDuration)
		return err
	case "notify":
		r.Notify, err = rawsql.Notify(ctx, c.databaseURL, c.clients, c.devices, c.sqlDuration)
		return err
	}
	n := c.cycleInstances
	if name == "handoff" || name == "waiters" {
		n = c.instances
	}
	in, err := b.instances(ctx, n)
	if err != nil {
		return err
	}
	defer func() {
		if serr := in.Stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	cycle := bench.CycleOptions{
		Instances: in, DB: b.db, Clients: c.clients, Devices: c.devices,
		Duration: c.duration, Rounds: c.rounds, Floor: b.floor, Progress: b.progress,
	}
	switch name {
	case "cycle":
		r.Cycle, err = bench.Cycle(ctx, cycle)
	case "sweep":
		counts, _ := intList(c.sweep) // checked by parseBenchFlags
		cycle.Duration = c.sweepDuration
		r.Sweep, err = bench.Sweep(ctx, bench.SweepOptions{Cycle: cycle, Clients: counts})
	case "handoff":
		r.Handoff, err = bench.Handoff(ctx, bench.HandoffOptions{
			Instances: in, DB: b.db, Waiters: c.handoffWaiters, Devices: c.handoffDevices,
			Hold: c.hold, Duration: c.handoffTime, Progress: b.progress,
		})
	case "waiters":
		r.Waiters, err = bench.Waiters(ctx, bench.WaitersOptions{
			Instances: in, DB: b.db, Waiters: c.waiters, Progress: b.progress,
		})
	case "scale", "scale-after-load":
		counts, _ := intList(c.scale)
		points, serr := bench.Scale(ctx, bench.ScaleOptions{
			Instances: in, DB: b.db, Counts: counts, Cycles: c.scaleCycles, Progress: b.progress,
		})
		if name == "scale" {
			r.Scale = points
		} else {
			r.ScaleAfterLoad = points
		}
		err = serr
	case "probe":
		r.Probe, err = b.probe(ctx, in)
	default:
		err = fmt.Errorf("unknown scenario %q", name)
	}
	return err
}

// probe measures the tcp probe's cost and, on an instance started with
// --probe-freshness, what the freshness window saves.
func (b *benchRun) probe(ctx context.Context, in *bench.Instances) (*bench.ProbeResult, error) {
	o := bench.ProbeOptions{Instances: in, DB: b.db, Cycles: b.cfg.probeCycles, Progress: b.progress}
	res, err := bench.Probe(ctx, o)
	if err != nil || b.cfg.freshness <= 0 || b.cfg.urls != "" {
		return res, err
	}
	fresh, err := b.instances(ctx, 1, "--probe-freshness", b.cfg.freshness.String())
	if err != nil {
		return nil, err
	}
	o.Instances = fresh
	withFresh, err := bench.Probe(ctx, o)
	if serr := fresh.Stop(); err == nil {
		err = serr
	}
	if err != nil {
		return nil, fmt.Errorf("with --probe-freshness %s: %w", b.cfg.freshness, err)
	}
	res.Fresh = &withFresh.TCP
	return res, nil
}
