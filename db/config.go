package db

import (
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/probe"
)

// Config tunes one allocator instance. Zero values take the defaults below.
type Config struct {
	// ProbeTimeout bounds one probe, and so how long the acquire
	// transaction holds a device's row lock for it.
	ProbeTimeout time.Duration
	// ProbeCandidates bounds how many devices one acquire transaction probes
	// before it gives up (each failure takes that device offline).
	ProbeCandidates int
	// ProbeFreshness, when positive, skips the acquire's probe for a device
	// released, or seen answering a probe, within this long: such a device
	// is granted in one statement. 0 (the default) probes every device whose
	// probe is not "none" on every acquire.
	ProbeFreshness time.Duration
	// DefaultTTL is a lease's lifetime when the client names none; MaxTTL caps
	// what a client may ask for.
	DefaultTTL time.Duration
	MaxTTL     time.Duration
	// MaxWait caps how long an acquire may long-poll.
	MaxWait time.Duration
	// ReapInterval is how often this instance looks for expired leases.
	ReapInterval time.Duration
	// HistoryRetention is how long ended leases are kept as history; older
	// ones are deleted in small batches every PruneInterval. 0 keeps them
	// for ever.
	HistoryRetention time.Duration
	// PruneInterval is how often this instance prunes history (jittered);
	// default 10 minutes.
	PruneInterval time.Duration
	// PriorityAging is how long a waiter must wait to rank like a request
	// one priority higher: waiting PriorityAging x k makes up for k levels,
	// so no priority starves. Default 1 minute.
	PriorityAging time.Duration
	// ProbeOnHandoff makes a waiter probe each device handed to it from the
	// line before answering (a dead one goes offline and the waiter keeps
	// its place). false trusts a handed-over device: it was just in use,
	// just passed a health probe, or was put back by an operator.
	ProbeOnHandoff bool
	// HeartbeatInterval is how often this instance marks itself alive in
	// devalloc.instances; default 10 s. An instance silent for
	// 3 x its HeartbeatInterval is dead for the line even if its listener
	// session (and liveness lock) lingers, and is removed, with its waiters,
	// once also silent for 3 x the remover's interval.
	HeartbeatInterval time.Duration
	// RecheckInterval is how often (jittered) each pool with waiters is
	// re-read, in case a notification was lost.
	RecheckInterval time.Duration
	// HealthInterval is how often offline devices due for a probe are looked
	// for; HealthBackoffMin/Max bound the per-device backoff between probes.
	HealthInterval   time.Duration
	HealthBackoffMin time.Duration
	HealthBackoffMax time.Duration
	// StatementTimeout and LockTimeout cap how long one statement of an
	// acquire transaction may run or wait for a lock; each attempt is bound
	// tighter by what is left of its wait. They should match the session's
	// statement_timeout and lock_timeout (serve sets both).
	StatementTimeout time.Duration
	LockTimeout      time.Duration
	// Prober checks devices; nil means the real network prober.
	Prober probe.Prober
	Logger *slog.Logger
	// ListenConnConfig is where the one LISTEN connection goes; nil means
	// the pool's own settings. Set it when the pool goes through a
	// transaction pooler (PgBouncer in transaction mode), which cannot
	// carry LISTEN: point it at PostgreSQL directly.
	ListenConnConfig *pgx.ConnConfig
	// Observer is told about acquires, probes, expiries and the listener,
	// for metrics; nil means nobody.
	Observer Observer
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.ProbeTimeout, 2*time.Second)
	def(&c.DefaultTTL, 10*time.Minute)
	def(&c.MaxTTL, 24*time.Hour)
	def(&c.MaxWait, 15*time.Minute)
	def(&c.ReapInterval, time.Second)
	def(&c.PruneInterval, 10*time.Minute)
	def(&c.PriorityAging, time.Minute)
	def(&c.HeartbeatInterval, 10*time.Second)
	def(&c.RecheckInterval, time.Second)
	def(&c.HealthInterval, 2*time.Second)
	def(&c.HealthBackoffMin, 2*time.Second)
	def(&c.HealthBackoffMax, 5*time.Minute)
	def(&c.StatementTimeout, 10*time.Second)
	def(&c.LockTimeout, 5*time.Second)
	if c.ProbeCandidates <= 0 {
		c.ProbeCandidates = 3
	}
	if c.Prober == nil {
		c.Prober = &probe.Network{Timeout: c.ProbeTimeout}
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}
