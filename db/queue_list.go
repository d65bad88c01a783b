package db

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db/devalloctype"
	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// QueueEntry is one waiting request's place in its pool's line.
type QueueEntry struct {
	ID       uuid.UUID
	Pool     string
	Labels   Labels
	Count    int
	Priority int
	Owner    string
	Holder   string
	// Position is 1 for the request served first when a device it fits is
	// free.
	Position   int
	EnqueuedAt time.Time
	// RankedAt is EnqueuedAt moved earlier by priority x PriorityAging:
	// the line's order.
	RankedAt time.Time
}

// QueueFilter narrows Queue; empty fields match everything.
type QueueFilter struct {
	Pool  string
	Owner string
	// Limit caps the entries returned: 0 means MaxPageSize.
	Limit int
}

// Queue lists the line of a pool (or of every pool), in serving order.
// Positions are those in the whole line even when only one owner's entries
// are listed.
func (a *Allocator) Queue(ctx context.Context, f QueueFilter) ([]QueueEntry, error) {
	limit := f.Limit
	if limit <= 0 || limit > MaxPageSize {
		limit = MaxPageSize
	}
	rows, err := a.q.ListQueue(ctx, dbsqlc.ListQueueParams{Pool: optional(f.Pool), Owner: optional(f.Owner), MaxRows: int32(limit)})
	if err != nil {
		return nil, fmt.Errorf("list the line of pool %q: %w", f.Pool, err)
	}
	out := make([]QueueEntry, 0, len(rows))
	for _, r := range rows {
		labels, err := devalloctype.DecodeLabels(r.Labels)
		if err != nil {
			return nil, fmt.Errorf("waiter %s labels: %w", r.ID, err)
		}
		out = append(out, QueueEntry{
			ID: r.ID, Pool: r.Pool, Labels: labels, Count: int(r.Count), Priority: int(r.Priority),
			Owner: r.Owner, Holder: r.Holder, Position: int(r.Position), EnqueuedAt: r.EnqueuedAt, RankedAt: r.RankedAt,
		})
	}
	return out, nil
}
