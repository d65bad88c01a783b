package wake

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/devalloctype"
	"github.com/devalloc/devalloc/db/internal/jitter"
	"github.com/devalloc/devalloc/db/internal/testsignal"
)

// IdleChannel is the NOTIFY channel the devices triggers publish on
// (migrations/00002_notify_idle.sql).
const IdleChannel = "devalloc_idle"

// Listener owns this instance's one dedicated LISTEN connection. It is a
// plain connection, never one from the pool: a pooled connection could be
// handed to a transaction, and a LISTEN through a transaction pooler hears
// nothing.
type Listener struct {
	connConfig *pgx.ConnConfig
	hub        *Hub
	log        *slog.Logger
	// claim runs on every new connection before it counts as up: it takes
	// the instance's liveness lock on this session (see claimLiveness).
	claim func(context.Context, *pgx.Conn) error
	// reconnected is called after every (re)connect: notifications sent
	// while the listener was down are lost and a full re-check must cover them.
	reconnected func()
	// self is this instance's notifier id: its own batches are skipped,
	// their waiters having been woken directly.
	self string
	up   atomic.Bool
	// Connects is signalled, for tests, each time the listener is up (its
	// claim made and its channels listened to).
	Connects testsignal.Signal[struct{}]
}

// NewListener returns the instance's listener: it wakes hub's waiters for
// what it hears, skipping batches from self, runs claim on every new
// connection before listening (the instance's liveness lock and served
// channel) and calls reconnected after each (re)connect.
func NewListener(cfg *pgx.ConnConfig, hub *Hub, log *slog.Logger, self string, claim func(context.Context, *pgx.Conn) error, reconnected func()) *Listener {
	return &Listener{connConfig: cfg.Copy(), hub: hub, log: log, self: self, claim: claim, reconnected: reconnected}
}

// Connected reports whether the listener is listening now (readiness).
func (l *Listener) Connected() bool { return l.up.Load() }

// Reconnect backoff of the listener. The instance is not ready while its
// listener is down, so the cap bounds how long it stays unready after the
// database is back: one refused connect per instance per cap is cheap.
const (
	listenerRetryMin = 50 * time.Millisecond
	listenerRetryMax = 2 * time.Second
)

// Run listens until ctx ends, reconnecting with backoff. The backoff starts
// over whenever a connection had come up: a new outage is retried quickly
// however long the instance has lived.
func (l *Listener) Run(ctx context.Context) {
	var backoff time.Duration
	for ctx.Err() == nil {
		err := l.listenOnce(ctx)
		backoff = nextListenerRetry(backoff, l.up.Swap(false))
		if ctx.Err() != nil {
			return
		}
		wait := jitter.Spread(backoff)
		l.log.Warn("listener lost its connection; reconnecting", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// nextListenerRetry is the backoff after a failed connection (or one that
// ended), given the previous one: the minimum after a connection that had
// come up, else double the last, at most listenerRetryMax.
func nextListenerRetry(prev time.Duration, wasUp bool) time.Duration {
	if wasUp || prev <= 0 {
		return listenerRetryMin
	}
	return min(prev*2, listenerRetryMax)
}

// listenOnce connects, listens and delivers notifications until the
// connection fails or ctx ends.
func (l *Listener) listenOnce(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, l.connConfig)
	if err != nil {
		return err
	}
	defer func() {
		// Bounded: the server may be gone, and Close must not hang on it.
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+IdleChannel); err != nil {
		return err
	}
	if l.claim != nil {
		if err := l.claim(ctx, conn); err != nil {
			return err
		}
	}
	l.up.Store(true)
	l.reconnected()
	l.Connects.Signal(struct{}{})
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if n.Channel != IdleChannel {
			// This instance's served channel (see ServedChannel).
			if id, handed, ok := parseServed(n.Payload); ok {
				l.hub.Served(id, handed)
			}
			continue
		}
		for _, ev := range ParseIdleNotification(n.Payload, l.self) {
			l.hub.Notify(ev)
		}
	}
}

// ParseIdleNotification reads a notification on the idle channel: one
// device from the trigger, or a batch from an instance's notifier (none
// when the batch is from self).
func ParseIdleNotification(payload, self string) []IdleEvent {
	var batch noticeBatch
	if json.Unmarshal([]byte(payload), &batch) != nil || batch.From == "" {
		return []IdleEvent{ParseIdlePayload(payload)}
	}
	if batch.From == self {
		return nil
	}
	out := make([]IdleEvent, 0, len(batch.Idle))
	for _, n := range batch.Idle {
		ev := IdleEvent{Pool: n.Pool}
		if len(n.Labels) > 0 {
			if labels, err := devalloctype.DecodeLabels(n.Labels); err == nil {
				ev.Labels, ev.LabelsKnown = labels, true
			}
		}
		out = append(out, ev)
	}
	return out
}

// ParseIdlePayload reads {"pool":..., "device":..., "labels":{...}}. A payload
// without readable labels still names the pool.
func ParseIdlePayload(payload string) IdleEvent {
	var p struct {
		Pool   string          `json:"pool"`
		Labels json.RawMessage `json:"labels"`
	}
	if err := json.Unmarshal([]byte(payload), &p); err != nil {
		return IdleEvent{Pool: payload}
	}
	ev := IdleEvent{Pool: p.Pool}
	if len(p.Labels) > 0 {
		if labels, err := devalloctype.DecodeLabels(p.Labels); err == nil {
			ev.Labels, ev.LabelsKnown = labels, true
		}
	}
	return ev
}
