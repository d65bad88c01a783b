package wake

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/devalloc/devalloc/db/devalloctype"
)

// Notifier tells the other instances about devices this instance freed
// (released, revoked, expired): after the freeing statement committed, in
// batches, rather than by a NOTIFY inside each freeing transaction. A
// notifying commit holds a database-wide lock through its WAL flush, so
// notifying releases commit one at a time; measured with devalloc bench
// (notify), sending after commit and coalescing is the fastest of the three
// ways, and the statements opt out of the trigger for it
// (devalloc.notify_by_caller, migrations/00007).
//
// Waiters at this instance are woken directly (freed), not through the
// database; the listener ignores this instance's own batches.
type Notifier struct {
	db Execer
	// from identifies this instance in its batches.
	from string
	hub  *Hub
	log  *slog.Logger

	mu      sync.Mutex
	pending []idleNotice
	kick    chan struct{} // capacity 1: "pending is not empty"
}

// idleNotice is one freed device as the other instances read it.
type idleNotice struct {
	Pool   string          `json:"pool"`
	Device int64           `json:"device"`
	Labels json.RawMessage `json:"labels,omitempty"`
}

// noticeBatch is the payload of one coalesced NOTIFY.
type noticeBatch struct {
	From string       `json:"from"`
	Idle []idleNotice `json:"idle"`
}

// MaxPayload keeps a NOTIFY payload under PostgreSQL's 8000-byte limit: the
// same number as devalloc.notify_payload_limit(), which the SQL senders use.
const MaxPayload = 7900

// Execer runs the NOTIFY statements: a pool, best wrapped for safe retries.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// NewNotifier returns a notifier that sends through db and wakes hub's
// waiters itself.
func NewNotifier(db Execer, hub *Hub, log *slog.Logger) *Notifier {
	return &Notifier{db: db, from: uuid.NewString(), hub: hub, log: log, kick: make(chan struct{}, 1)}
}

// Self is the id this instance's batches carry; its own listener skips them.
func (n *Notifier) Self() string { return n.from }

// Freed announces a device the caller's committed statement made idle:
// waiters here at once, other instances with the next batch.
func (n *Notifier) Freed(pool string, device int64, labels []byte) {
	ev := IdleEvent{Pool: pool}
	if l, err := devalloctype.DecodeLabels(labels); err == nil {
		ev.Labels, ev.LabelsKnown = l, true
	}
	n.hub.Notify(ev)
	n.mu.Lock()
	n.pending = append(n.pending, idleNotice{Pool: pool, Device: device, Labels: labels})
	n.mu.Unlock()
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// HandedOver wakes the waiters here that a committed transaction of this
// instance served, without waiting for the notification the transaction
// sent (devalloc.grant_to_waiter notifies every instance at commit; waiters
// elsewhere hear of it that way).
func (n *Notifier) HandedOver(waiters []uuid.UUID) {
	for _, id := range waiters {
		n.hub.Served(id, nil)
	}
}

// Run sends batches until ctx ends: whatever was freed while the previous
// NOTIFY was in flight goes in the next one, so under load one statement
// carries many devices and when quiet each device goes out at once.
func (n *Notifier) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			// What is left goes out before the instance stops.
			n.flush(ctx)
			return
		case <-n.kick:
		}
		n.flush(ctx)
	}
}

// sendBound bounds one NOTIFY statement: the database may be the reason the
// instance stops.
const sendBound = time.Second

// flush sends what is pending, within sendBound, whether or not ctx has
// ended: a stop must not drop the batch it comes upon (a send on an ended
// context fails at once, and select may take the kick before the stop).
func (n *Notifier) flush(ctx context.Context) {
	sendCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sendBound)
	defer cancel()
	n.send(sendCtx)
}

// send notifies everything pending. A failure loses only hints: the
// waiters' periodic re-check finds the devices within about a second.
func (n *Notifier) send(ctx context.Context) {
	n.mu.Lock()
	batch := n.pending
	n.pending = nil
	n.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	payloads := n.payloads(batch)
	if _, err := n.db.Exec(ctx, `SELECT pg_notify('`+IdleChannel+`', p) FROM unnest($1::text[]) AS p`, payloads); err != nil {
		n.log.Warn("notify freed devices failed; waiters elsewhere find them at their next re-check", "devices", len(batch), "err", err)
	}
}

// payloads packs notices into as few payloads under MaxPayload as it can.
// A notice too large alone goes without its labels (waiters of every
// selector of the pool then look).
func (n *Notifier) payloads(batch []idleNotice) []string {
	var out []string
	cur := noticeBatch{From: n.from}
	size := len(`{"from":"","idle":[]}`) + len(n.from)
	flush := func() {
		if len(cur.Idle) > 0 {
			b, _ := json.Marshal(cur) // plain strings, numbers and valid JSON only
			out = append(out, string(b))
		}
		cur.Idle = nil
		size = len(`{"from":"","idle":[]}`) + len(n.from)
	}
	for _, notice := range batch {
		b, _ := json.Marshal(notice)
		if size+len(b)+1 > MaxPayload {
			flush()
			if size+len(b) > MaxPayload {
				notice.Labels = nil
				b, _ = json.Marshal(notice)
			}
		}
		cur.Idle = append(cur.Idle, notice)
		size += len(b) + 1
	}
	flush()
	return out
}
