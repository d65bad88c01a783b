package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/cmd/devalloc/bench"
	"github.com/devalloc/devalloc/cmd/devalloc/bench/plot"
)

// benchScenarios are the scenarios "devalloc bench" knows, in the order
// "all" runs them.
var benchScenarios = []string{"cycle", "sweep", "handoff", "scale-after-load", "waiters", "scale", "probe", "baselines", "notify"}

// benchConfig is everything "devalloc bench" is told by flags or env.
type benchConfig struct {
	databaseURL    string
	urls           string
	key            string
	binary         string
	maxConns       int
	cycleInstances int
	instances      int
	clients        int
	devices        int
	duration       time.Duration
	rounds         int
	sweep          string
	sweepDuration  time.Duration
	handoffWaiters int
	handoffDevices int
	hold           time.Duration
	handoffTime    time.Duration
	waiters        int
	scale          string
	scaleCycles    int
	probeCycles    int
	freshness      time.Duration
	sqlDuration    time.Duration
	plotDir        string
	out            string
	quiet          bool
	scenarios      []string
}

func parseBenchFlags(args []string, stderr io.Writer) (benchConfig, error) {
	var c benchConfig
	fs := newFlagSet("bench", "bench [flags] [scenario...]  (scenarios: all "+strings.Join(benchScenarios, " ")+")", stderr)
	fs.stringVar(&c.databaseURL, "database-url", "DATABASE_URL", "postgres://postgres@localhost:5432/devalloc_bench?sslmode=disable",
		"PostgreSQL the instances serve from and the bare-SQL runs use (created when missing; the bench adds and removes its own pools and schemas)")
	fs.stringVar(&c.urls, "url", "DEVALLOC_BENCH_URL", "", "comma-separated base URLs of running instances to drive (with --key); empty: start instances of this binary")
	fs.stringVar(&c.key, "key", "DEVALLOC_BENCH_KEY", "", "admin API key for --url instances")
	fs.stringVar(&c.binary, "binary", "DEVALLOC_BENCH_BINARY", "", "devalloc executable to start instances of (default: this one)")
	fs.intVar(&c.maxConns, "max-conns", "DEVALLOC_BENCH_MAX_CONNS", 0, "--max-conns of started instances (0: serve's default)")
	fs.intVar(&c.cycleInstances, "cycle-instances", "DEVALLOC_BENCH_CYCLE_INSTANCES", 1, "instances for cycle and sweep")
	fs.intVar(&c.instances, "instances", "DEVALLOC_BENCH_INSTANCES", 3, "instances for handoff and waiters")
	fs.intVar(&c.clients, "clients", "DEVALLOC_BENCH_CLIENTS", 32, "cycle: concurrent clients")
	fs.intVar(&c.devices, "devices", "DEVALLOC_BENCH_DEVICES", 1000, "cycle, sweep and the SQL runs: devices (probe none)")
	fs.durationVar(&c.duration, "duration", "DEVALLOC_BENCH_DURATION", 10*time.Second, "cycle: length of each devalloc run and each floor run")
	fs.intVar(&c.rounds, "rounds", "DEVALLOC_BENCH_ROUNDS", 3, "cycle: interleaved devalloc/floor rounds (medians are reported)")
	fs.stringVar(&c.sweep, "sweep", "DEVALLOC_BENCH_SWEEP", "1,2,4,8,16,32,64", "sweep: client counts")
	fs.durationVar(&c.sweepDuration, "sweep-duration", "DEVALLOC_BENCH_SWEEP_DURATION", 4*time.Second, "sweep: length of each run")
	fs.intVar(&c.handoffWaiters, "handoff-waiters", "DEVALLOC_BENCH_HANDOFF_WAITERS", 200, "handoff: waiting clients")
	fs.intVar(&c.handoffDevices, "handoff-devices", "DEVALLOC_BENCH_HANDOFF_DEVICES", 20, "handoff: devices")
	fs.durationVar(&c.hold, "hold", "DEVALLOC_BENCH_HOLD", 50*time.Millisecond, "handoff: how long each lease is held")
	fs.durationVar(&c.handoffTime, "handoff-duration", "DEVALLOC_BENCH_HANDOFF_DURATION", 10*time.Second, "handoff: measured window")
	fs.intVar(&c.waiters, "waiters", "DEVALLOC_BENCH_WAITERS", 10_000, "waiters: concurrent long-polls")
	fs.stringVar(&c.scale, "scale", "DEVALLOC_BENCH_SCALE", "100,10000,1000000", "scale: device counts")
	fs.intVar(&c.scaleCycles, "scale-cycles", "DEVALLOC_BENCH_SCALE_CYCLES", 500, "scale: measured cycles per count and selector")
	fs.intVar(&c.probeCycles, "probe-cycles", "DEVALLOC_BENCH_PROBE_CYCLES", 500, "probe: measured cycles per probe kind")
	fs.durationVar(&c.freshness, "probe-freshness", "DEVALLOC_BENCH_PROBE_FRESHNESS", time.Minute, "probe: --probe-freshness of the instance that measures the freshness window (0: skip)")
	fs.durationVar(&c.sqlDuration, "sql-duration", "DEVALLOC_BENCH_SQL_DURATION", 5*time.Second, "baselines and notify: length of each bare-SQL run")
	fs.stringVar(&c.plotDir, "plot", "DEVALLOC_BENCH_PLOT", "", "write cycles.png, scale.png and handoff.png into this directory")
	fs.stringVar(&c.out, "out", "DEVALLOC_BENCH_OUT", "", "also write the JSON report to this file")
	fs.boolVar(&c.quiet, "quiet", "DEVALLOC_BENCH_QUIET", false, "no progress on stderr")
	if err := fs.parse(args); err != nil {
		return c, err
	}
	for _, s := range fs.Args() {
		switch {
		case s == "all":
			c.scenarios = append(c.scenarios, benchScenarios...)
		case slices.Contains(benchScenarios, s):
			c.scenarios = append(c.scenarios, s)
		default:
			return c, usageError{error: fmt.Errorf("unknown scenario %q (want all or %s)", s, strings.Join(benchScenarios, ", "))}
		}
	}
	if len(c.scenarios) == 0 {
		c.scenarios = benchScenarios
	}
	if c.urls != "" && c.key == "" {
		return c, usageError{error: errors.New("--url needs --key (an admin key of those instances)")}
	}
	if _, err := intList(c.sweep); err != nil {
		return c, usageError{error: fmt.Errorf("--sweep: %w", err)}
	}
	if _, err := intList(c.scale); err != nil {
		return c, usageError{error: fmt.Errorf("--scale: %w", err)}
	}
	return c, nil
}

// intList parses "1,2,4".
func intList(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// runBench runs the chosen scenarios and prints the report as one JSON
// line on stdout; "bench plot REPORT DIR" draws a saved report instead.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "plot" {
		return runBenchPlot(args[1:], stdout)
	}
	c, err := parseBenchFlags(args, stderr)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := ensureDatabase(ctx, c.databaseURL, logger); err != nil {
		return err
	}
	// The schema first, so every scenario (and its settling) finds it.
	if err := migrateUp(ctx, c.databaseURL, logger); err != nil {
		return err
	}
	db, err := pgxpool.New(ctx, c.databaseURL)
	if err != nil {
		return fmt.Errorf("bench database: %w", err)
	}
	defer db.Close()
	if c.binary == "" {
		if c.binary, err = os.Executable(); err != nil {
			return fmt.Errorf("find this executable: %w", err)
		}
	}
	r := bench.Report{
		Date:    time.Now().UTC().Format(time.RFC3339),
		Command: "devalloc bench " + strings.Join(args, " "),
	}
	if r.Machine, err = machine(ctx, db); err != nil {
		return err
	}
	if r.Machine.Autovacuum != "on" {
		logger.Warn("autovacuum is off on this server: dead row versions pile up over the run and later scenarios pay for them; "+
			"production runs with it on, so publish figures from a server that does", "autovacuum", r.Machine.Autovacuum)
	}
	b := &benchRun{cfg: c, db: db, progress: bench.NewProgress(stderr, c.quiet), log: logger}
	for _, s := range c.scenarios {
		if err := b.scenario(ctx, s, &r); err != nil {
			return fmt.Errorf("scenario %s: %w", s, err)
		}
	}
	r.Targets = checkTargets(r)
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	if c.out != "" {
		if err := os.WriteFile(c.out, append(line, '\n'), 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	if c.plotDir != "" {
		if _, err := plot.Write(r, c.plotDir); err != nil {
			return err
		}
	}
	printTargets(stderr, r.Targets)
	_, err = fmt.Fprintf(stdout, "%s\n", line)
	return err
}

// runBenchPlot draws the plots of a report a bench run wrote (--out, or its
// stdout saved).
func runBenchPlot(args []string, stdout io.Writer) error {
	if len(args) != 2 {
		return usageError{error: errors.New("usage: devalloc bench plot REPORT.json DIR")}
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		return fmt.Errorf("read report: %w", err)
	}
	var r bench.Report
	if err := json.Unmarshal(data, &r); err != nil {
		return fmt.Errorf("report %s: %w", args[0], err)
	}
	paths, err := plot.Write(r, args[1])
	for _, p := range paths {
		fmt.Fprintln(stdout, p)
	}
	return err
}

// machine records where the figures come from.
func machine(ctx context.Context, db *pgxpool.Pool) (bench.Machine, error) {
	m := bench.Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	err := db.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('fsync'),
		current_setting('synchronous_commit'), current_setting('autovacuum')`).
		Scan(&m.Postgres, &m.Fsync, &m.SyncCommit, &m.Autovacuum)
	if err != nil {
		return m, fmt.Errorf("read server settings: %w", err)
	}
	return m, nil
}
