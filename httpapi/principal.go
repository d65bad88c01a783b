package httpapi

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/adapters/humago"
)

// Principal is who a request comes from: an API key's name, and whether
// that key may act on everything (admin) or only on its own leases (client).
type Principal struct {
	Name  string
	Admin bool
}

// Anonymous is every caller until API keys exist. It is an admin, so the
// API stays fully usable in the meantime.
var Anonymous = Principal{Name: "anonymous", Admin: true}

// Authenticator decides who r comes from. An error that is a
// huma.StatusError (e.g. huma.Error401Unauthorized, possibly wrapped by
// huma.ErrorWithHeaders for WWW-Authenticate) is sent to the client as is;
// any other error is a server error (500, logged).
type Authenticator func(r *http.Request) (Principal, error)

func anonymous(*http.Request) (Principal, error) { return Anonymous, nil }

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the principal stored in ctx, if any.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// principal is the caller as handlers see it. Without one (a wiring bug)
// it is the zero Principal: no name, not an admin, so every check fails
// closed instead of granting access.
func principal(ctx context.Context) Principal {
	p, _ := PrincipalFrom(ctx)
	return p
}

// metaPublic marks operations that need no principal (health checks, which
// orchestrators call without credentials).
const metaPublic = "devalloc.public"

func isPublic(op *huma.Operation) bool {
	public, _ := op.Metadata[metaPublic].(bool)
	return public
}

// principalMiddleware resolves the caller once per request and stores it in
// the request context. Handlers only ever read it from there, so changing
// where principals come from means changing the Authenticator, not them.
func principalMiddleware(api huma.API, authn Authenticator, log *slog.Logger) func(huma.Context, func(huma.Context)) {
	return func(ctx huma.Context, next func(huma.Context)) {
		if isPublic(ctx.Operation()) {
			next(ctx)
			return
		}
		r, _ := humago.Unwrap(ctx)
		p, err := authn(r)
		if err != nil {
			var se huma.StatusError
			if !errors.As(err, &se) {
				log.Error("authentication failed", "op", ctx.Operation().OperationID, "err", err)
				se = problem(http.StatusInternalServerError, "", "internal server error")
			}
			var he huma.HeadersError
			if errors.As(err, &he) {
				for k, vs := range he.GetHeaders() {
					for _, v := range vs {
						ctx.AppendHeader(k, v)
					}
				}
			}
			writeProblem(api, ctx, se)
			return
		}
		next(huma.WithValue(ctx, principalKey{}, p))
	}
}

// requireAdmin fails with 403 unless the caller is an admin.
func requireAdmin(ctx context.Context) error {
	if p := principal(ctx); !p.Admin {
		return problem(http.StatusForbidden, kindForbidden, "this operation needs an admin key")
	}
	return nil
}

// mayUseLease fails with 403 unless the caller owns the lease or is an
// admin.
func mayUseLease(ctx context.Context, owner string) error {
	p := principal(ctx)
	if p.Admin || (p.Name != "" && p.Name == owner) {
		return nil
	}
	return problem(http.StatusForbidden, kindNotYourLease, "this lease belongs to another key")
}
