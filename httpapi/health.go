package httpapi

import (
	"context"
	"net/http"
	"time"

	"github.com/danielgtaylor/huma/v2"
)

// readyTimeout bounds a readiness check, so a hung database makes the
// instance unready instead of hanging the orchestrator's probe.
const readyTimeout = 2 * time.Second

func (s *server) registerHealth(api huma.API) {
	tags := []string{"health"}
	public := map[string]any{metaPublic: true}
	huma.Register(api, huma.Operation{
		OperationID: "healthz", Method: http.MethodGet, Path: "/healthz", Tags: tags,
		Summary:     "Liveness",
		Description: "200 while the process serves HTTP; it does not touch the database.",
		Metadata:    public,
	}, s.healthz)
	huma.Register(api, huma.Operation{
		OperationID: "readyz", Method: http.MethodGet, Path: "/readyz", Tags: tags,
		Summary:     "Readiness",
		Description: "200 when the database answers and this instance's LISTEN connection is up; 503 otherwise.",
		Metadata:    public,
		Errors:      []int{http.StatusServiceUnavailable},
	}, s.readyz)
}

func (s *server) healthz(context.Context, *struct{}) (*struct{ Body HealthStatus }, error) {
	return &struct{ Body HealthStatus }{Body: HealthStatus{Status: "ok"}}, nil
}

func (s *server) readyz(ctx context.Context, _ *struct{}) (*struct{ Body HealthStatus }, error) {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	if err := s.alloc.Ready(ctx); err != nil {
		// The reason goes to the log, not to unauthenticated callers: it can
		// name database hosts and users.
		s.log.Warn("not ready", "err", err)
		return nil, problem(http.StatusServiceUnavailable, kindNotReady, "this instance cannot serve yet; its log says why")
	}
	return &struct{ Body HealthStatus }{Body: HealthStatus{Status: "ok"}}, nil
}
