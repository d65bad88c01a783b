package httpapi

import (
	"context"
	"net/http"

	"github.com/danielgtaylor/huma/v2"
)

func (s *server) registerPools(api huma.API) {
	huma.Register(api, huma.Operation{
		OperationID: "listPools", Method: http.MethodGet, Path: "/v1/pools", Tags: []string{"pools"},
		Summary:     "List pools",
		Description: "Every pool with its devices counted by state, and the acquires waiting on it at this instance.",
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
			Maintenance: p.Maintenance, Waiting: p.Waiting,
		})
	}
	return out, nil
}
