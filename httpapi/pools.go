package httpapi

import (
	"context"
	"net/http"
	"time"

	"github.com/danielgtaylor/huma/v2"
)

func (s *server) registerPools(api huma.API) {
	huma.Register(api, huma.Operation{
		OperationID: "listPools", Method: http.MethodGet, Path: "/v1/pools", Tags: []string{"pools"},
		Summary: "List pools",
		Description: "Every pool with its devices counted by state, the acquires waiting in its line (across all instances) " +
			"and how long the longest-waiting of them has waited. GET /v1/queue lists the line itself.",
	}, s.listPools)
}

func (s *server) listPools(ctx context.Context, _ *struct{}) (*struct{ Body PoolList }, error) {
	pools, err := s.alloc.Pools(ctx)
	if err != nil {
		return nil, s.fail(ctx, "listPools", "pools", err)
	}
	out := &struct{ Body PoolList }{Body: PoolList{Pools: make([]PoolSummary, 0, len(pools))}}
	for _, p := range pools {
		out.Body.Pools = append(out.Body.Pools, PoolSummary{
			Name: p.Name, Idle: p.Idle, Leased: p.Leased, Offline: p.Offline,
			Maintenance: p.Maintenance, Waiting: p.Waiting, OldestWaitSeconds: seconds(p.OldestWait),
		})
	}
	return out, nil
}

// seconds renders a span as JSON seconds, to the millisecond: finer is
// noise next to the network, and short numbers read better.
func seconds(d time.Duration) float64 {
	return float64(max(d, 0).Milliseconds()) / 1000
}
