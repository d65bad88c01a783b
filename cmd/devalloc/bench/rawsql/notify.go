package rawsql

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/cmd/devalloc/bench"
)

// The ways of sending NOTIFY on release.
const (
	// modeInTransaction: pg_notify inside the release transaction, as
	// devalloc's trigger does. Every committing notifier takes PostgreSQL's
	// one global notify lock at COMMIT.
	modeInTransaction = "in-transaction"
	// modeAfterCommit: the release commits without notifying, then the
	// client sends one autocommit pg_notify: a second round trip and
	// transaction, but the release's own COMMIT skips the notify lock.
	modeAfterCommit = "after-commit"
	// modeCoalesced: the release commits without notifying and hands the
	// release to its instance's notifier (coalescer), which sends one
	// NOTIFY per batch.
	modeCoalesced = "coalesced"
)

var notifyModes = []string{modeInTransaction, modeAfterCommit, modeCoalesced}

// notifyInstances is how many allocator instances the coalesced mode
// simulates, each with one notifier and its share of the clients.
const notifyInstances = 3

// deliveryGrace bounds the wait, once the clients are done, for
// notifications still on their way.
const deliveryGrace = 10 * time.Second

// notifyShape is raw-schema's: devalloc's tables have the one-active-lease
// index too.
var notifyShape = shape{oneActiveLease: true}

// modeRun is one mode's result plus the tracker's bookkeeping.
type modeRun struct {
	result bench.NotifyResult
	// releases counts every release made, including those of cycles that
	// ended after the run time and so are not in CyclesPerSec: their
	// notifications are awaited too.
	releases int
	missing  int // releases no notification covered
	overtook int // deliveries counted as 0: the notification beat the COMMIT's reply
	notices  int // notifications that covered releases: fewer than releases when coalesced
	strays   int // notifications that covered no release
}

// Notify measures the cost of NOTIFY on release, three ways: in the
// release transaction ("in-transaction"), in an autocommit statement after
// it ("after-commit"), and batched by one notifier per simulated instance
// ("coalesced", 3 instances sharing the clients). Each mode runs for d with
// clients clients (each on its own connection) doing devalloc's SKIP LOCKED
// acquire and a release on devices devices, while one LISTEN connection
// receives the notifications.
//
// Delivery runs from the moment the release's COMMIT returned at the
// releasing client to the moment the listener received the notification
// that covers it; a notification that beats the COMMIT's reply counts as 0.
// Notify fails if any release went unnotified or a notification matched no
// release.
func Notify(ctx context.Context, databaseURL string, clients, devices int, d time.Duration) ([]bench.NotifyResult, error) {
	if err := validate(clients, devices, d); err != nil {
		return nil, fmt.Errorf("notify: %w", err)
	}
	results := make([]bench.NotifyResult, 0, len(notifyModes))
	for _, mode := range notifyModes {
		run, err := runNotifyMode(ctx, databaseURL, mode, clients, devices, d)
		if err != nil {
			return nil, err
		}
		if run.missing > 0 || run.strays > 0 {
			return nil, fmt.Errorf("notify %s: %d of %d releases never notified, %d notifications matched no release",
				mode, run.missing, run.releases, run.strays)
		}
		results = append(results, run.result)
	}
	return results, nil
}

// runNotifyMode measures one mode in a fresh schema, on a channel of its
// own.
func runNotifyMode(ctx context.Context, databaseURL, mode string, clients, devices int, d time.Duration) (modeRun, error) {
	channel := "rawnotify_" + strings.ReplaceAll(mode, "-", "_")
	t := newTracker()
	run := modeRun{result: bench.NotifyResult{Mode: mode, Clients: clients, Seconds: d.Seconds()}}
	err := inSchema(ctx, databaseURL, notifyDesign.schema, notifyShape, devices, func(*pgx.Conn) error {
		// A listener or notifier that fails cancels the clients' context,
		// with its error as the cause.
		runCtx, fail := context.WithCancelCause(ctx)
		defer fail(nil)
		lis, err := startListener(runCtx, databaseURL, channel, t, fail)
		if err != nil {
			return err
		}
		defer lis.stop(ctx)
		var notifiers []*coalescer
		// On an early return; finish is idempotent. A closure, so that it
		// sees the notifiers started below.
		defer func() { finishAll(ctx, notifiers) }()
		if mode == modeCoalesced {
			for i := range min(notifyInstances, clients) {
				n, err := startCoalescer(runCtx, databaseURL, i, channel, t, fail)
				if err != nil {
					return err
				}
				notifiers = append(notifiers, n)
			}
		}

		cycle := notifyCycle(newQueries(notifyDesign, notifyShape), mode, channel, t, notifiers)
		run.result.CyclesPerSec, err = runClients(runCtx, databaseURL, clients, d, cycle)
		finishAll(ctx, notifiers) // their last batches go out before the tracker is sealed
		t.seal()
		if err != nil {
			return err
		}
		return awaitDeliveries(runCtx, t)
	})
	if err != nil {
		return modeRun{}, fmt.Errorf("notify %s: %w", mode, err)
	}
	r := t.report()
	run.result.Delivery = r.delivery
	run.releases, run.missing, run.overtook, run.notices, run.strays = r.releases, r.missing, r.overtook, r.notices, r.strays
	run.result.Releases, run.result.Notifications = r.releases, r.notices
	return run, nil
}

// notifyCycle is one acquire → release cycle that notifies mode's way and
// tells t which release the notification covers and when its COMMIT
// returned.
func notifyCycle(q *queries, mode, channel string, t *tracker, notifiers []*coalescer) cycleFunc {
	var retries atomic.Int64 // SKIP LOCKED retries only when devices < clients
	return func(ctx context.Context, c client) error {
		dev, lease, err := q.acquire(ctx, c, nil, &retries)
		if err != nil {
			return err
		}
		// The lease id is unique in the schema: it names the release.
		key := strconv.FormatInt(lease, 10)
		var inTx []any
		if mode == modeInTransaction {
			inTx = []any{channel, key}
		}
		if err := q.release(ctx, c.conn, dev, lease, nil, inTx); err != nil {
			return err
		}
		committed := time.Now()
		switch mode {
		case modeInTransaction:
			t.register(key, committed)
		case modeAfterCommit:
			t.register(key, committed) // before the NOTIFY, so the listener finds it
			if _, err := c.conn.Exec(ctx, notifySQL, channel, key); err != nil {
				return fmt.Errorf("notify release of lease %d: %w", lease, err)
			}
		case modeCoalesced:
			notifiers[c.id%len(notifiers)].add(committed)
		}
		return nil
	}
}

// awaitDeliveries waits, up to deliveryGrace, until t has a notification
// for every release; what is still missing then shows in t's report.
func awaitDeliveries(ctx context.Context, t *tracker) error {
	grace := time.NewTimer(deliveryGrace)
	defer grace.Stop()
	select {
	case <-t.allDelivered():
	case <-grace.C:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	return nil
}
