package rawsql

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// coalescer is one simulated instance's notifier in the coalesced mode:
// the instance's clients hand it their releases once COMMIT has returned,
// and it sends one NOTIFY for whatever accumulated while its previous
// NOTIFY was in flight. The payload is a batch id that the tracker maps to
// the batch's releases, so it stays small however large the batch.
type coalescer struct {
	instance int
	channel  string
	conn     *pgx.Conn
	t        *tracker

	mu      sync.Mutex
	pending []time.Time // commit times of releases no NOTIFY covers yet

	wake     chan struct{} // a token: pending may have grown
	stop     chan struct{} // closed when the clients are done
	stopOnce sync.Once
	done     chan struct{}
	seq      int // batches sent; only the notifier goroutine touches it
}

// startCoalescer connects instance's notifier and starts it. If its
// connection fails during the run, fail is called with the error.
func startCoalescer(ctx context.Context, databaseURL string, instance int, channel string, t *tracker, fail func(error)) (*coalescer, error) {
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return nil, fmt.Errorf("connect notifier %d: %w", instance, err)
	}
	c := &coalescer{
		instance: instance, channel: channel, conn: conn, t: t,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	go func() {
		defer close(c.done)
		if err := c.loop(ctx); err != nil {
			fail(fmt.Errorf("notifier %d: %w", instance, err))
		}
	}()
	return c, nil
}

// add hands over one release whose COMMIT returned at commit. It never
// waits for a NOTIFY.
func (c *coalescer) add(commit time.Time) {
	c.mu.Lock()
	c.pending = append(c.pending, commit)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default: // a token is there already
	}
}

func (c *coalescer) loop(ctx context.Context) error {
	for {
		select {
		case <-c.wake:
			if err := c.flush(ctx); err != nil {
				return err
			}
		case <-c.stop:
			// No client adds any more: what is left goes in a last batch.
			return c.flush(ctx)
		case <-ctx.Done():
			return nil // the run was cut short and says why
		}
	}
}

// flush sends one NOTIFY covering every pending release.
func (c *coalescer) flush(ctx context.Context) error {
	c.mu.Lock()
	batch := c.pending
	c.pending = nil
	c.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	c.seq++
	key := fmt.Sprintf("i%d-b%d", c.instance, c.seq)
	// Registered before it is sent, so the listener always finds it.
	c.t.register(key, batch...)
	if _, err := c.conn.Exec(ctx, notifySQL, c.channel, key); err != nil {
		return fmt.Errorf("notify batch %s of %d releases: %w", key, len(batch), err)
	}
	return nil
}

// finish tells the notifier the clients are done, waits for its last
// batch, and closes its connection. Calls after the first do nothing.
func (c *coalescer) finish(ctx context.Context) {
	c.stopOnce.Do(func() {
		close(c.stop)
		<-c.done
		closeConn(ctx, c.conn)
	})
}

// finishAll finishes every notifier in ns.
func finishAll(ctx context.Context, ns []*coalescer) {
	for _, n := range ns {
		n.finish(ctx)
	}
}
