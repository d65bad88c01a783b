package httpapi

import (
	"context"
	"net/http"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"github.com/devalloc/devalloc/db"
)

type getQueueInput struct {
	Pool  string `query:"pool" doc:"Only this pool's line." example:"android"`
	Limit int    `query:"limit" default:"100" minimum:"1" maximum:"1000" doc:"At most this many entries." example:"100"`
}

func (s *server) registerQueue(api huma.API) {
	huma.Register(api, huma.Operation{
		OperationID: "getQueue", Method: http.MethodGet, Path: "/v1/queue", Tags: []string{"queue"},
		Summary: "List waiting acquires",
		Description: "The acquires waiting for devices, across all instances, by pool in the order they will be served: " +
			"by priority with aging, first come first served within a priority. Admins see every entry; " +
			"clients see their own, with their positions in the whole line.",
	}, s.getQueue)
}

func (s *server) getQueue(ctx context.Context, in *getQueueInput) (*struct{ Body Queue }, error) {
	f := db.QueueFilter{Pool: in.Pool, Limit: in.Limit}
	if p := principal(ctx); !p.Admin {
		f.Owner = p.Name
		if f.Owner == "" {
			// No identity means no entries, not everyone's.
			return &struct{ Body Queue }{Body: Queue{Queue: []QueueEntry{}}}, nil
		}
	}
	entries, err := s.alloc.Queue(ctx, f)
	if err != nil {
		return nil, s.fail(ctx, "getQueue", "the queue", err)
	}
	out := &struct{ Body Queue }{Body: Queue{Queue: make([]QueueEntry, 0, len(entries))}}
	now := time.Now()
	for _, e := range entries {
		out.Body.Queue = append(out.Body.Queue, QueueEntry{
			ID: e.ID, Pool: e.Pool, Labels: labelsFromDB(e.Labels), Count: e.Count, Priority: e.Priority,
			Owner: e.Owner, Holder: e.Holder, Position: e.Position, EnqueuedAt: e.EnqueuedAt.UTC(),
			// The database's clock set enqueued_at, this instance's reads
			// it; seconds() clamps a small skew at 0.
			WaitedSeconds: seconds(now.Sub(e.EnqueuedAt)),
		})
	}
	return out, nil
}
