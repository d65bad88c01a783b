package db

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/internal/testsignal"
	"github.com/devalloc/devalloc/db/wake"
)

// Allocator is one devalloc instance's view of the database: the acquire,
// renew and release operations, and the background services that keep
// leases and devices moving (listener, re-checker, reaper, health checker).
// Any number of allocators may share one database; PostgreSQL keeps them
// correct.
type Allocator struct {
	pool     *pgxpool.Pool
	q        *dbsqlc.Queries
	cfg      Config
	log      *slog.Logger
	hub      *wake.Hub
	listener *wake.Listener
	notifier *wake.Notifier
	// flights joins retries of an idempotent acquire that is still running.
	flights flightGroup
	// probedPools remembers the pools whose last grant needed a probe, so
	// their acquires skip the one-statement path that cannot probe (see
	// attemptUnprobed).
	probedPools sync.Map // pool name → struct{}
	// busyLines remembers pools whose line was found busy lately, so
	// their waiting acquires join it without first trying for an idle
	// device the line would not let them have (see lineLooksBusy).
	busyLines busyLines
	// satisfiable spares waiting acquires the "could anything ever fit"
	// query for selectors that recently could.
	satisfiable satisfiableCache
	// stranded holds waiters answered while their row could not leave the
	// line; the re-checker removes those rows.
	stranded strandedWaiters
	// The background services with a type of their own (the re-checker
	// and the instance keeper are still methods of the Allocator).
	reaper    *reaper
	health    *healthChecker
	pruner    *pruner
	rechecker *rechecker
	keeper    *instanceKeeper
	// joined is signalled, for tests, each time a request of this
	// instance is in line (joined or rejoined).
	joined testsignal.Signal[joinedLine]
	// instanceID is this instance's row in devalloc.instances, 0 until its
	// listener first connects (see claimLiveness).
	instanceID atomic.Int64
	// draining is closed by Drain: waiting acquires give up at once.
	draining  chan struct{}
	drainOnce sync.Once

	mu      sync.Mutex
	stop    context.CancelFunc
	running sync.WaitGroup
}

// New returns an allocator on pool. Call Start before serving acquires that
// wait, and Stop when done.
func New(pool *pgxpool.Pool, cfg Config) *Allocator {
	cfg = cfg.withDefaults()
	a := &Allocator{
		pool:     pool,
		q:        dbsqlc.New(retrying(pool)),
		cfg:      cfg,
		log:      cfg.Logger,
		hub:      wake.NewHub(),
		draining: make(chan struct{}),
	}
	a.notifier = wake.NewNotifier(retrying(pool), a.hub, a.log)
	a.reaper = &reaper{q: a.q, interval: cfg.ReapInterval, probeTimeout: cfg.ProbeTimeout, log: a.log,
		observer: cfg.Observer, ended: a.endedLease}
	a.health = &healthChecker{q: a.q, interval: cfg.HealthInterval, probeTimeout: cfg.ProbeTimeout,
		backoffMin: cfg.HealthBackoffMin, backoffMax: cfg.HealthBackoffMax, probe: a.probe,
		handedOver: a.notifier.HandedOver, log: a.log}
	a.pruner = &pruner{q: a.q, interval: cfg.PruneInterval, retention: cfg.HistoryRetention, log: a.log}
	a.rechecker = newRechecker(a.q, a.hub, cfg.RecheckInterval, a.log, a.clearStranded)
	a.keeper = &instanceKeeper{q: a.q, interval: cfg.HeartbeatInterval, silentAfter: a.silentAfter(),
		probeTimeout: a.registeredProbeTimeout(), id: &a.instanceID, requestRecheck: a.requestRecheck, log: a.log}
	listenTo := cfg.ListenConnConfig
	if listenTo == nil {
		listenTo = pool.Config().ConnConfig
	}
	a.listener = wake.NewListener(listenTo, a.hub, a.log, a.notifier.Self(), a.claimLiveness, func() {
		cfg.Observer.ListenerConnected()
		a.requestRecheck()
	})
	return a
}

// Config returns the effective configuration (defaults filled in).
func (a *Allocator) Config() Config { return a.cfg }

// Start launches the background services. They run until Stop.
func (a *Allocator) Start(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stop != nil {
		return errors.New("allocator already started")
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.stop = cancel
	for _, s := range a.passServices() {
		s.Start(ctx)
	}
	a.keeper.Start(ctx)
	services := []func(context.Context){a.listener.Run, a.notifier.Run}
	for _, run := range services {
		a.running.Add(1)
		go func() {
			defer a.running.Done()
			run(ctx)
		}()
	}
	return nil
}

// Stop ends the background services and waits for them.
func (a *Allocator) Stop() {
	a.Drain()
	// The passes first: what they free is announced through the notifier,
	// which stops last.
	for _, s := range a.passServices() {
		s.Stop()
	}
	// Idempotent acquires run on their own goroutines; draining ended
	// their waits, so they finish within one attempt.
	a.flights.running.Wait()
	// The stranded marks live in this process only: one last pass gives
	// back what was handed to rows whose requests are answered, or nobody
	// would until the leases' TTL. Bounded: the database may be gone.
	ctx, cancel := context.WithTimeout(context.Background(), queueBound)
	defer cancel()
	a.clearStranded(ctx)
	// Then the listener and the notifier (its last batch announces what
	// the steps above freed), and this instance's row.
	a.mu.Lock()
	stop := a.stop
	a.mu.Unlock()
	if stop != nil {
		stop()
	}
	a.running.Wait()
	a.keeper.Stop()
}

// service is a background loop the Allocator starts and stops.
type service interface {
	Start(context.Context)
	Stop()
}

// passServices are the services that run passes over the database: they
// stop first at Stop (the keeper, which removes this instance's row, last).
func (a *Allocator) passServices() []service {
	return []service{a.reaper, a.health, a.pruner, a.rechecker}
}

// Drain makes this instance give up its waiting acquires at once, with
// ErrShuttingDown, and refuse new waits, so clients can retry at another
// instance instead of sitting on a connection about to close. Acquires that
// need no wait still run. Call it when shutdown begins.
func (a *Allocator) Drain() {
	a.drainOnce.Do(func() { close(a.draining) })
}

func (a *Allocator) isDraining() bool {
	select {
	case <-a.draining:
		return true
	default:
		return false
	}
}

// Ready reports whether this instance can serve: the database answers and
// the listener is connected (without it waiters would hear of freed devices
// only through the slower re-check).
func (a *Allocator) Ready(ctx context.Context) error {
	if a.isDraining() {
		return errors.New("shutting down")
	}
	if err := a.pool.Ping(ctx); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	if !a.listener.Connected() {
		return errors.New("listener: not connected")
	}
	return nil
}

// Hub exposes the waiter hub (for pool summaries and tests).
func (a *Allocator) Hub() *wake.Hub { return a.hub }

func (a *Allocator) requestRecheck() { a.rechecker.request() }
