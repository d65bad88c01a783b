package wake

import (
	"container/list"
	"sync"

	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db/devalloctype"
	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// IdleEvent says a device became idle: from a NOTIFY, or from a re-check
// that found it idle. Events are hints; the woken waiter still has to win
// the device in a transaction.
type IdleEvent struct {
	Pool   string
	Labels devalloctype.Labels
	// LabelsKnown is false when the notification carried only the pool
	// (outsized labels); then one waiter of every selector in the pool wakes.
	LabelsKnown bool
}

// Hub is one instance's registry of acquires waiting for a device. It holds
// no database connection: waiters block on channels. Their place in line is
// a row of devalloc.waiters; the hub delivers two kinds of wake-up: served
// (a transaction handed this waiter its devices; see Served) and idle hints
// (the listener and re-checker saw a device become idle, so the oldest
// matching waiter here runs the pool's dispatch). Hints go to the oldest
// matching waiter that is not already woken, preferring one that is not in
// the middle of an attempt.
type Hub struct {
	mu    sync.Mutex
	seq   uint64
	pools map[string]*poolWaiters
	byID  map[uuid.UUID]*Waiter
}

type poolWaiters struct {
	bySelector map[string]*selectorQueue
	count      int
}

// selectorQueue is the FIFO of waiters that share one selector.
type selectorQueue struct {
	sel     devalloctype.Selector
	key     string
	waiters list.List // of *Waiter, oldest first
}

// Waiter is one waiting acquire. Its fields other than sel and wake are
// guarded by the hub's mutex.
type Waiter struct {
	hub *Hub
	// ID names the waiter's row in devalloc.waiters. Written only by the
	// waiter's own goroutine (renameWaiter, under the mutex); others read
	// it under the mutex.
	ID    uuid.UUID
	sel   devalloctype.Selector
	seq   uint64
	queue *selectorQueue
	elem  *list.Element
	// wake holds one token while a wake-up is pending.
	wake chan struct{}
	// pending is the event behind the token in wake; nil when none.
	pending *IdleEvent
	// attempting is true while the waiter runs an acquire transaction.
	attempting bool
	// served is set once a transaction reported handing it its devices;
	// handed holds them when the report carried them.
	served bool
	handed []dbsqlc.WaiterLeasesRow
	// enqueued is set once its row is in devalloc.waiters.
	enqueued bool
}

// NewHub returns an empty hub.
func NewHub() *Hub {
	return &Hub{pools: map[string]*poolWaiters{}, byID: map[uuid.UUID]*Waiter{}}
}

// Join queues a waiter for sel. The caller must Leave it.
func (h *Hub) Join(sel devalloctype.Selector) *Waiter {
	sel = sel.Clone()
	h.mu.Lock()
	defer h.mu.Unlock()
	pw := h.pools[sel.Pool]
	if pw == nil {
		pw = &poolWaiters{bySelector: map[string]*selectorQueue{}}
		h.pools[sel.Pool] = pw
	}
	key := sel.Key()
	q := pw.bySelector[key]
	if q == nil {
		q = &selectorQueue{sel: sel, key: key}
		pw.bySelector[key] = q
	}
	h.seq++
	w := &Waiter{hub: h, ID: uuid.Must(uuid.NewV7()), sel: sel, seq: h.seq, queue: q, wake: make(chan struct{}, 1)}
	w.elem = q.waiters.PushBack(w)
	h.byID[w.ID] = w
	pw.count++
	return w
}

// Served wakes the waiter with this id, if it is here, for good: it was
// handed its devices (handed, when the news carried them; nil: the waiter
// reads them).
func (h *Hub) Served(id uuid.UUID, handed []dbsqlc.WaiterLeasesRow) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w := h.byID[id]
	if w == nil {
		return
	}
	w.served = true
	if handed != nil {
		w.handed = handed
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// RenameWaiter gives w a new id, for a row that goes back in line: the old
// one was served (or dropped) and is not used again. News for the old id is
// no longer w's.
func (h *Hub) RenameWaiter(w *Waiter) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.byID, w.ID)
	w.ID = uuid.Must(uuid.NewV7())
	h.byID[w.ID] = w
}

// Has reports whether a waiter with this id is waiting here.
func (h *Hub) Has(id uuid.UUID) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.byID[id] != nil
}

// IsServed reports whether a served wake-up reached the waiter.
func (w *Waiter) IsServed() bool {
	w.hub.mu.Lock()
	defer w.hub.mu.Unlock()
	return w.served
}

// HandedLeases returns the leases the served news carried, if it did.
func (w *Waiter) HandedLeases() []dbsqlc.WaiterLeasesRow {
	w.hub.mu.Lock()
	defer w.hub.mu.Unlock()
	return w.handed
}

// ResetServed makes the waiter wait again (it went back in line).
func (w *Waiter) ResetServed() {
	w.hub.mu.Lock()
	defer w.hub.mu.Unlock()
	w.served = false
	w.handed = nil
	w.enqueued = false
	select {
	case <-w.wake:
	default:
	}
}

// MarkEnqueued records that the waiter's row is in line.
func (w *Waiter) MarkEnqueued() {
	w.hub.mu.Lock()
	defer w.hub.mu.Unlock()
	w.enqueued = true
}

// QueuedIDs lists the waiters here whose rows are in line and that are not
// yet known to be served.
func (h *Hub) QueuedIDs() []uuid.UUID {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]uuid.UUID, 0, len(h.byID))
	for id, w := range h.byID {
		if w.enqueued && !w.served {
			out = append(out, id)
		}
	}
	return out
}

// Wake delivers a token when a matching device may have become idle.
func (w *Waiter) Wake() <-chan struct{} { return w.wake }

// BeginAttempt marks the waiter as trying to acquire. Any pending wake-up is
// consumed: the attempt about to run sees every device idle at this moment.
func (w *Waiter) BeginAttempt() {
	w.hub.mu.Lock()
	defer w.hub.mu.Unlock()
	w.attempting = true
	w.pending = nil
	select {
	case <-w.wake:
	default:
	}
}

// EndAttempt marks the attempt over; a wake-up that arrived meanwhile stays
// pending, so the waiter retries at once.
func (w *Waiter) EndAttempt() {
	w.hub.mu.Lock()
	defer w.hub.mu.Unlock()
	w.attempting = false
}

// Leave removes the waiter. A wake-up it never used is passed on to the
// next matching waiter, so a waiter that times out at the wrong moment
// cannot swallow a device.
func (w *Waiter) Leave() {
	h := w.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if w.elem == nil {
		return
	}
	w.queue.waiters.Remove(w.elem)
	w.elem = nil
	delete(h.byID, w.ID)
	pw := h.pools[w.sel.Pool]
	pw.count--
	if w.queue.waiters.Len() == 0 {
		delete(pw.bySelector, w.queue.key)
	}
	if pw.count == 0 {
		delete(h.pools, w.sel.Pool)
	}
	if ev := w.pending; ev != nil {
		w.pending = nil
		h.wakeLocked(*ev)
	}
}

// Notify wakes waiters for ev and reports how many it woke.
func (h *Hub) Notify(ev IdleEvent) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.wakeLocked(ev)
}

// wakeLocked signals the waiters ev may serve (under h.mu). A wake only
// tells a waiter to look: the woken waiter runs the pool's dispatch, the
// SQL that serves the line.
func (h *Hub) wakeLocked(ev IdleEvent) int {
	pw := h.pools[ev.Pool]
	if pw == nil {
		return 0
	}
	if !ev.LabelsKnown {
		woken := 0
		for _, q := range pw.bySelector {
			if w := q.candidate(); w != nil {
				w.signal(ev)
				woken++
			}
		}
		return woken
	}
	var best *Waiter
	for _, q := range pw.bySelector {
		if !ev.Labels.Contains(q.sel.Labels) {
			continue
		}
		if w := q.candidate(); w != nil && w.betterThan(best) {
			best = w
		}
	}
	if best == nil {
		return 0
	}
	best.signal(ev)
	return 1
}

// candidate is the queue's oldest waiter without a pending wake-up,
// preferring one that is not attempting (an attempting waiter may be about
// to take another device and would leave this one unclaimed meanwhile).
func (q *selectorQueue) candidate() *Waiter {
	var busy *Waiter
	for e := q.waiters.Front(); e != nil; e = e.Next() {
		w := e.Value.(*Waiter)
		if w.pending != nil || w.served {
			continue
		}
		if !w.attempting {
			return w
		}
		if busy == nil {
			busy = w
		}
	}
	return busy
}

// betterThan orders candidates across selector queues: idle before
// attempting, then oldest first.
func (w *Waiter) betterThan(other *Waiter) bool {
	if other == nil {
		return true
	}
	if w.attempting != other.attempting {
		return !w.attempting
	}
	return w.seq < other.seq
}

func (w *Waiter) signal(ev IdleEvent) {
	w.pending = &ev
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// WaitingSelectors lists, per pool that has waiters here, the distinct
// label selectors they wait with.
func (h *Hub) WaitingSelectors() map[string][]devalloctype.Labels {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string][]devalloctype.Labels, len(h.pools))
	for name, pw := range h.pools {
		sels := make([]devalloctype.Labels, 0, len(pw.bySelector))
		for _, q := range pw.bySelector {
			// Never changed after Join's clone: safe to share.
			sels = append(sels, q.sel.Labels)
		}
		out[name] = sels
	}
	return out
}

// Waiting reports how many acquires wait on pool in this instance.
func (h *Hub) Waiting(pool string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if pw := h.pools[pool]; pw != nil {
		return pw.count
	}
	return 0
}
