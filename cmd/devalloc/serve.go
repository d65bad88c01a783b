package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/db/migrate"
	"github.com/devalloc/devalloc/httpapi"
)

// serveConfig is everything "devalloc serve" is told by flags or env.
type serveConfig struct {
	addr              string
	databaseURL       string
	migrate           bool
	demo              int
	maxConns          int
	probeTimeout      time.Duration
	probeFreshness    time.Duration
	retention         time.Duration
	listenURL         string
	listenTo          *pgx.ConnConfig // parsed listenURL; nil: the pool's
	pprofAddr         string
	defaultTTL        time.Duration
	maxTTL            time.Duration
	maxWait           time.Duration
	reapInterval      time.Duration
	recheckInterval   time.Duration
	healthInterval    time.Duration
	shutdownTimeout   time.Duration
	adminKey          string
	maxWaitingKey     int
	priorityAging     time.Duration
	heartbeat         time.Duration
	handoffProbe      string // "probe" or "trust"
	clientMaxPriority int
	statementTO       time.Duration
	lockTO            time.Duration
	logs              logFlags
}

// sessionParams bound what one instance can do to the database, so a
// stuck statement, a blocked lock or a frozen instance cannot hold devices
// or connections indefinitely:
//   - statement_timeout and lock_timeout end a statement that runs or waits
//     too long (the request then answers 503 and may be retried);
//   - idle_in_transaction_session_timeout ends the transaction of an
//     instance that stopped mid-acquire (SIGSTOP, a hung host) and so
//     releases the row locks it held. An acquire transaction is idle while
//     it probes, so the bound is the probe timeout plus a margin;
//   - jit is off: devalloc's statements touch a handful of rows, and a JIT
//     compile (triggered by a cost estimate, e.g. a set-returning function's
//     default 1000 rows) takes hundreds of milliseconds on a small machine.
func (c serveConfig) sessionParams() map[string]string {
	ms := func(d time.Duration) string { return fmt.Sprint(d.Milliseconds()) }
	return map[string]string{
		"statement_timeout":                   ms(c.statementTO),
		"lock_timeout":                        ms(c.lockTO),
		"idle_in_transaction_session_timeout": ms(c.probeTimeout + 10*time.Second),
		"jit":                                 "off",
	}
}

// --handoff-probe values.
const (
	handoffProbe = "probe"
	handoffTrust = "trust"
)

// optionsMaxClientPriority is --client-max-priority as httpapi.Options takes it,
// where 0 means the default: a 0 given here means "no priority above 0".
func (c serveConfig) optionsMaxClientPriority() int {
	if c.clientMaxPriority == 0 {
		return -1
	}
	return c.clientMaxPriority
}

func parseServeFlags(args []string, stderr io.Writer) (serveConfig, error) {
	var c serveConfig
	fs := newFlagSet("serve", "serve [flags]", stderr)
	fs.stringVar(&c.addr, "addr", "DEVALLOC_ADDR", ":8080", "HTTP listen address")
	fs.databaseFlag(&c.databaseURL)
	fs.boolVar(&c.migrate, "migrate", "DEVALLOC_MIGRATE", true, "apply pending migrations at start (under goose's advisory lock); false leaves them to \"devalloc migrate up\"")
	fs.intVar(&c.demo, "demo", "DEVALLOC_DEMO", 0, "register this many simulated devices in pool \"demo\" (loopback listeners owned by this process; one is dead)")
	fs.intVar(&c.maxConns, "max-conns", "DEVALLOC_MAX_CONNS", 8, "maximum PostgreSQL connections in the pool (the LISTEN connection is one more)")
	fs.durationVar(&c.probeTimeout, "probe-timeout", "DEVALLOC_PROBE_TIMEOUT", 2*time.Second, "hard deadline of one device probe (the acquire transaction holds the row lock meanwhile)")
	fs.stringVar(&c.pprofAddr, "pprof-addr", "DEVALLOC_PPROF_ADDR", "", "serve Go profiles (/debug/pprof/) on this separate address, e.g. 127.0.0.1:6060; empty: off")
	fs.stringVar(&c.listenURL, "listen-database-url", "DEVALLOC_LISTEN_DATABASE_URL", "", "PostgreSQL URL for the one LISTEN connection, when --database-url goes through a pooler that cannot carry LISTEN (PgBouncer in transaction mode); empty: --database-url")
	fs.durationVar(&c.retention, "history-retention", "DEVALLOC_HISTORY_RETENTION", 90*24*time.Hour, "keep ended leases (the history, and their Idempotency-Keys) this long, then delete them in small batches; 0 keeps them for ever")
	fs.durationVar(&c.probeFreshness, "probe-freshness", "DEVALLOC_PROBE_FRESHNESS", 0, "skip the acquire's probe of a device released by a holder, or seen answering a probe, within this long (0: probe on every acquire)")
	fs.durationVar(&c.defaultTTL, "default-ttl", "DEVALLOC_DEFAULT_TTL", 10*time.Minute, "lease lifetime when the client asks for none")
	fs.durationVar(&c.maxTTL, "max-ttl", "DEVALLOC_MAX_TTL", 24*time.Hour, "longest lease lifetime a client may ask for")
	fs.durationVar(&c.maxWait, "max-wait", "DEVALLOC_MAX_WAIT", 15*time.Minute, "longest an acquire may long-poll (wait_seconds is capped to it)")
	fs.durationVar(&c.reapInterval, "reap-interval", "DEVALLOC_REAP_INTERVAL", time.Second, "how often expired leases are reclaimed")
	fs.durationVar(&c.recheckInterval, "recheck-interval", "DEVALLOC_RECHECK_INTERVAL", time.Second, "how often (jittered) each pool with waiters is re-read, in case a notification was lost")
	fs.durationVar(&c.healthInterval, "health-interval", "DEVALLOC_HEALTH_INTERVAL", 2*time.Second, "how often offline devices due for a re-probe are looked for")
	fs.durationVar(&c.shutdownTimeout, "shutdown-timeout", "DEVALLOC_SHUTDOWN_TIMEOUT", 15*time.Second, "on SIGINT/SIGTERM, how long in-flight requests (long-polls too) may finish before they are cut")
	fs.stringVar(&c.adminKey, "admin-key", "DEVALLOC_ADMIN_KEY", "", fmt.Sprintf("ensure an admin API key with this secret exists (at least %d characters); prefer the environment variable, flags show in ps", db.MinSecretLength))
	fs.durationVar(&c.statementTO, "statement-timeout", "DEVALLOC_STATEMENT_TIMEOUT", 10*time.Second, "PostgreSQL statement_timeout on this instance's connections")
	fs.durationVar(&c.lockTO, "lock-timeout", "DEVALLOC_LOCK_TIMEOUT", 5*time.Second, "PostgreSQL lock_timeout on this instance's connections")
	fs.intVar(&c.maxWaitingKey, "max-waiting-per-key", "DEVALLOC_MAX_WAITING_PER_KEY", httpapi.DefaultMaxWaitingPerKey, "acquires one API key may have waiting on this instance at once; past it, 429 with Retry-After")
	fs.durationVar(&c.priorityAging, "priority-aging", "DEVALLOC_PRIORITY_AGING", time.Minute, "waiting this long in a pool's line ranks an acquire like one a priority level higher, so low priorities are served in the end")
	fs.durationVar(&c.heartbeat, "heartbeat-interval", "DEVALLOC_HEARTBEAT_INTERVAL", 10*time.Second, "how often this instance marks itself alive in devalloc.instances; an instance silent for three intervals is dead for the line even if the server keeps its session, and its waiters are removed from the line")
	fs.stringVar(&c.handoffProbe, "handoff-probe", "DEVALLOC_HANDOFF_PROBE", handoffProbe, "a device freed and handed straight to a waiting acquire: \"probe\" it first (one that fails goes offline and the waiter keeps its place) or \"trust\" it as its last holder left it")
	fs.intVar(&c.clientMaxPriority, "client-max-priority", "DEVALLOC_CLIENT_MAX_PRIORITY", httpapi.DefaultMaxClientPriority, "highest acquire priority a client key may ask for (0-100; admin keys may use up to 100); above it, 403")
	c.logs.register(fs)
	if err := fs.parse(args); err != nil {
		return c, err
	}
	if err := fs.noArgs(); err != nil {
		return c, err
	}
	if c.maxWaitingKey < 1 {
		return c, usageError{error: fmt.Errorf("--max-waiting-per-key %d: want at least 1", c.maxWaitingKey)}
	}
	if c.handoffProbe != handoffProbe && c.handoffProbe != handoffTrust {
		return c, usageError{error: fmt.Errorf("--handoff-probe %q: want probe or trust", c.handoffProbe)}
	}
	if c.clientMaxPriority < 0 || c.clientMaxPriority > 100 {
		return c, usageError{error: fmt.Errorf("--client-max-priority %d: want 0 to 100", c.clientMaxPriority)}
	}
	if c.adminKey != "" && len(c.adminKey) < db.MinSecretLength {
		return c, usageError{error: fmt.Errorf("--admin-key / DEVALLOC_ADMIN_KEY: want at least %d characters", db.MinSecretLength)}
	}
	if c.maxConns < 2 {
		// An acquire transaction keeps its connection while it probes; with
		// a single connection every other request, releases included, would
		// queue behind each probe.
		return c, usageError{error: fmt.Errorf("--max-conns %d: want at least 2", c.maxConns)}
	}
	if c.demo < 0 {
		return c, usageError{error: fmt.Errorf("--demo %d: want 0 or more", c.demo)}
	}
	for name, d := range map[string]time.Duration{
		"probe-timeout": c.probeTimeout, "default-ttl": c.defaultTTL, "max-ttl": c.maxTTL,
		"max-wait": c.maxWait, "reap-interval": c.reapInterval, "recheck-interval": c.recheckInterval,
		"health-interval": c.healthInterval, "shutdown-timeout": c.shutdownTimeout,
		"statement-timeout": c.statementTO, "lock-timeout": c.lockTO, "priority-aging": c.priorityAging,
		"heartbeat-interval": c.heartbeat,
	} {
		if d <= 0 {
			return c, usageError{error: fmt.Errorf("--%s %s: want a positive duration", name, d)}
		}
	}
	var err error
	if c.listenTo, err = listenConfig(c.listenURL); err != nil {
		return c, err
	}
	if c.retention < 0 {
		return c, usageError{error: fmt.Errorf("--history-retention %s: want 0 (keep for ever) or a positive duration", c.retention)}
	}
	if c.probeFreshness < 0 {
		return c, usageError{error: fmt.Errorf("--probe-freshness %s: want 0 (off) or a positive duration", c.probeFreshness)}
	}
	if c.defaultTTL > c.maxTTL {
		return c, usageError{error: fmt.Errorf("--default-ttl %s is longer than --max-ttl %s", c.defaultTTL, c.maxTTL)}
	}
	// The API's schema caps what a client may ever send; a server maximum
	// above it could never be asked for.
	if c.maxWait > httpapi.WaitSecondsCeiling*time.Second {
		return c, usageError{error: fmt.Errorf("--max-wait %s: at most %s", c.maxWait, httpapi.WaitSecondsCeiling*time.Second)}
	}
	if c.maxTTL > httpapi.TTLSecondsCeiling*time.Second {
		return c, usageError{error: fmt.Errorf("--max-ttl %s: at most %s", c.maxTTL, httpapi.TTLSecondsCeiling*time.Second)}
	}
	return c, nil
}

// runServe is "devalloc serve": make sure the database exists and is
// migrated, start the allocator, serve HTTP until SIGINT/SIGTERM, then shut
// down in order: HTTP first (in-flight requests finish), then the
// allocator's background services, then the pool.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseServeFlags(args, stderr)
	if err != nil {
		return err
	}
	logger, err := c.logs.logger(stderr)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if err := ensureDatabase(ctx, c.databaseURL, logger); err != nil {
		return err
	}
	if c.migrate {
		if err := migrateUp(ctx, c.databaseURL, logger); err != nil {
			return err
		}
	}
	pool, err := openPool(ctx, c.databaseURL, c.maxConns, c.sessionParams())
	if err != nil {
		return err
	}
	// Deferred calls run last-in first-out: on the way out the HTTP server
	// has stopped, then the demo devices close, the allocator stops, and the
	// pool closes last.
	clean := false
	defer func() {
		if clean {
			logger.Info("stopped")
		}
	}()
	defer pool.Close()

	metrics := httpapi.NewMetrics()
	alloc := db.New(pool, db.Config{
		Observer:          metrics,
		ProbeTimeout:      c.probeTimeout,
		ProbeFreshness:    c.probeFreshness,
		DefaultTTL:        c.defaultTTL,
		MaxTTL:            c.maxTTL,
		MaxWait:           c.maxWait,
		ReapInterval:      c.reapInterval,
		HistoryRetention:  c.retention,
		ListenConnConfig:  c.listenTo,
		RecheckInterval:   c.recheckInterval,
		HealthInterval:    c.healthInterval,
		StatementTimeout:  c.statementTO,
		LockTimeout:       c.lockTO,
		PriorityAging:     c.priorityAging,
		HeartbeatInterval: c.heartbeat,
		ProbeOnHandoff:    c.handoffProbe == handoffProbe,
		Logger:            logger,
	})
	if err := alloc.Start(ctx); err != nil {
		return err
	}
	defer alloc.Stop()

	keys := db.NewKeyStore(pool)
	if c.adminKey != "" {
		key, err := keys.EnsureAdmin(ctx, c.adminKey)
		if err != nil {
			return err
		}
		logger.Info("admin key ready", "name", key.Name)
	}
	var demoKey string
	if c.demo > 0 {
		farm, err := startDemo(ctx, alloc, c.demo, logger)
		if err != nil {
			return err
		}
		defer farm.Close()
		if demoKey, err = rotateDemoKey(ctx, keys); err != nil {
			return err
		}
	}

	if c.pprofAddr != "" {
		if err := startPprof(ctx, c.pprofAddr, logger); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.addr, err)
	}
	srv := &http.Server{
		Handler: httpapi.New(alloc, httpapi.Options{
			Logger:            logger,
			Authenticate:      httpapi.BearerAuth(keys),
			MaxWaitingPerKey:  c.maxWaitingKey,
			MaxClientPriority: c.optionsMaxClientPriority(),
			Metrics:           metrics,
		}),
		ReadHeaderTimeout: 10 * time.Second,
		// No ReadTimeout or WriteTimeout: an acquire may long-poll for up to
		// --max-wait, and a write deadline would cut it off mid-wait.
		// Request bodies are small and read with the API's own limits.
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	base := "http://" + dialable(ln.Addr())
	logger.Info("devalloc serving", "version", versionString(), "addr", ln.Addr().String(), "url", base)
	if c.demo > 0 {
		fmt.Fprintf(stdout, "\nAcquire a demo device (the key is a client key named %q, new at every start):\n\n"+
			"  curl -s -X POST %s/v1/leases -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' -d '{\"pool\":\"%s\",\"wait_seconds\":10}'\n\n"+
			"Watch it live at %s/dashboard (sign in with that key).\n"+
			"An admin key (to register devices) comes from: bin/devalloc keys create --name me --role admin\n\n",
			demoKeyName, base, demoKey, demoPool, base)
	}

	select {
	case err := <-served:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	stop() // a second signal ends the process at once
	logger.Info("shutting down", "grace", c.shutdownTimeout.String())
	// Waiting acquires answer 503 now, so their clients retry elsewhere
	// instead of holding the shutdown for its whole grace period.
	alloc.Drain()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Warn("requests still running at the end of the grace period; closing them", "err", err)
		srv.Close()
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http server: %w", err)
	}
	clean = true
	return nil
}

// migrateUp applies pending migrations; goose's advisory lock makes
// instances that start together take turns.
func migrateUp(ctx context.Context, databaseURL string, logger *slog.Logger) error {
	m, err := migrate.Open(ctx, databaseURL, logger)
	if err != nil {
		return err
	}
	defer m.Close()
	n, err := m.Up(ctx)
	if err != nil {
		return err
	}
	logger.Info("schema migrated", "applied", n)
	return nil
}

// dialable is a listener address a client on this machine can connect to:
// a wildcard host (":8080", "[::]:8080") becomes 127.0.0.1.
func dialable(addr net.Addr) string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return addr.String()
	}
	if tcp.IP == nil || tcp.IP.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", fmt.Sprint(tcp.Port))
	}
	return tcp.String()
}
