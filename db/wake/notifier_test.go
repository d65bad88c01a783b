package wake

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// Batches stay under PostgreSQL's payload limit and carry every device; a
// device whose labels alone exceed it goes without them.
func TestNotifierPayloadsStayUnderTheLimit(t *testing.T) {
	n := NewNotifier(nil, NewHub(), nil)
	var batch []idleNotice
	for i := range 500 {
		batch = append(batch, idleNotice{Pool: "pool", Device: int64(i), Labels: json.RawMessage(`{"model":"pixel-8","rack":"r12"}`)})
	}
	huge := `{"blob":"` + strings.Repeat("x", 9000) + `"}`
	batch = append(batch, idleNotice{Pool: "pool", Device: 500, Labels: json.RawMessage(huge)})
	seen := map[int64]bool{}
	payloads := n.payloads(batch)
	if len(payloads) < 2 {
		t.Fatalf("%d payloads for 501 devices", len(payloads))
	}
	for _, p := range payloads {
		if len(p) > MaxPayload {
			t.Fatalf("payload of %d bytes", len(p))
		}
		var b noticeBatch
		if err := json.Unmarshal([]byte(p), &b); err != nil {
			t.Fatal(err)
		}
		for _, d := range b.Idle {
			seen[d.Device] = true
			if d.Device == 500 && d.Labels != nil {
				t.Fatal("the outsized labels were kept")
			}
		}
	}
	if len(seen) != 501 {
		t.Fatalf("%d of 501 devices in the payloads", len(seen))
	}
}

// recordingExecer records, for each Exec, whether its context had already
// ended (a pool's Exec then fails at once and the batch is lost).
type recordingExecer struct {
	mu   sync.Mutex
	live int
}

func (r *recordingExecer) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ctx.Err() != nil {
		return pgconn.CommandTag{}, ctx.Err()
	}
	r.live++
	return pgconn.CommandTag{}, nil
}

// The tenth read: Allocator.Stop frees devices (the last stranded pass)
// and then stops the notifier at once. When the kick and the stop were
// both ready, Run could take the kick and send on the ended context: the
// batch was dropped (32 of 64 stops), and other instances heard of those
// devices only at their next re-check.
func TestNotifierSendsTheLastBatchAtStop(t *testing.T) {
	for i := range 64 {
		ex := &recordingExecer{}
		n := NewNotifier(ex, NewHub(), slog.New(slog.DiscardHandler))
		n.Freed("pool", 1, []byte(`{}`))
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // stopped right after the device was freed
		n.Run(ctx)
		if ex.live == 0 {
			t.Fatalf("stop %d: the last batch was not sent", i+1)
		}
	}
}
