package httpapi

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"

	"github.com/danielgtaylor/huma/v2"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/db/devalloctype"
)

// Problem types (RFC 9457 "type") for devalloc's own errors, so clients can
// tell apart failures that share a status (a 409 because the name is taken
// versus because the device is leased) without parsing the detail text.
// Validation errors keep Huma's default type (about:blank, omitted).
const (
	problemTypePrefix = "urn:devalloc:problem:"

	kindNotFound        = "not-found"
	kindDeviceExists    = "device-exists"
	kindDeviceLeased    = "device-leased"
	kindNoDevice        = "no-device-available"
	kindUnsatisfiable   = "unsatisfiable-selector"
	kindLeaseEnded      = "lease-ended"
	kindForbidden       = "forbidden"
	kindNotYourLease    = "not-your-lease"
	kindPriorityTooHigh = "priority-too-high"
	kindNotReady        = "not-ready"
	kindClientGone      = "client-closed-request"
	kindInvalidValue    = "invalid-value"

	kindDatabaseUnavailable = "database-unavailable"
	kindShuttingDown        = "shutting-down"

	kindIdempotencyKeyReused = "idempotency-key-reused"
	kindTooManyWaiting       = "too-many-waiting"
)

// statusClientClosedRequest is nginx's code for "the client went away
// first"; nobody reads the response, but logs and metrics see it.
const statusClientClosedRequest = 499

// problem builds a problem+json error. kind "" leaves the type about:blank.
func problem(status int, kind, detail string) huma.StatusError {
	e := huma.NewError(status, detail)
	if m, ok := e.(*huma.ErrorModel); ok {
		if kind != "" {
			m.Type = problemTypePrefix + kind
		}
		if m.Title == "" && status == statusClientClosedRequest {
			m.Title = "Client Closed Request"
		}
	}
	return e
}

// fail turns an error from the db package into what the client sees, and
// logs it at the level it deserves: server faults at Error with the
// operation, anything the client caused at Debug. subject names the thing
// acted on for the detail text, e.g. `device "pixel-1"`.
func (s *server) fail(ctx context.Context, op, subject string, err error) error {
	var (
		out   error
		ended *devalloctype.LeaseEndedError
	)
	switch {
	case ctx.Err() != nil:
		// The client went away (e.g. stopped long-polling an acquire); the
		// db layer has already rolled back whatever was in flight. Not a
		// server fault, and the response goes nowhere.
		s.log.Debug("client went away", "op", op, "err", err)
		return problem(statusClientClosedRequest, kindClientGone, "client closed the request")
	case errors.Is(err, devalloctype.ErrNotFound):
		out = problem(http.StatusNotFound, kindNotFound, subject+" not found")
	case errors.Is(err, devalloctype.ErrDeviceExists):
		out = problem(http.StatusConflict, kindDeviceExists, subject+" already exists")
	case errors.Is(err, devalloctype.ErrDeviceLeased):
		out = problem(http.StatusConflict, kindDeviceLeased,
			subject+" is leased: its lease must end first (DELETE takes force=true to end it)")
	case errors.As(err, &ended):
		out = problem(http.StatusGone, kindLeaseEnded,
			subject+" has ended ("+ended.Lease.EndReason+")")
	case errors.Is(err, devalloctype.ErrNoDevice):
		out = retryLater(http.StatusServiceUnavailable, kindNoDevice,
			"no matching device became available for "+subject+"; retry later", retryAfter())
	case errors.Is(err, devalloctype.ErrIdempotencyKeyReused):
		// 422 as in the IETF Idempotency-Key draft: the request is wrong,
		// not in conflict with a state that may change.
		out = problem(http.StatusUnprocessableEntity, kindIdempotencyKeyReused,
			"this Idempotency-Key was already used by this API key for a different acquire "+
				"(pool, labels, count, ttl_seconds or holder differ); use a new key for a new request")
	case errors.Is(err, devalloctype.ErrUnsatisfiable):
		out = problem(http.StatusUnprocessableEntity, kindUnsatisfiable,
			"no registered device matches "+subject+", in any state, so waiting could never succeed")
	case errors.Is(err, devalloctype.ErrShuttingDown):
		out = retryLater(http.StatusServiceUnavailable, kindShuttingDown,
			"this instance is shutting down; retry (another instance may serve you at once)", "1")
	case db.IsTransient(err):
		// The database is restarting, unreachable or timed out: the
		// request may succeed shortly (at this instance or another), so
		// say that, with a Retry-After, rather than a 500.
		s.log.Warn("database unavailable", "op", op, "subject", subject, "err", err)
		out = databaseUnavailable()
	case db.IsInvalidData(err):
		// A value the edge checks missed, refused by PostgreSQL itself; the
		// input is at fault, and the transaction has rolled back.
		s.log.Warn("value refused by the database", "op", op, "subject", subject, "err", err)
		out = problem(http.StatusUnprocessableEntity, kindInvalidValue,
			"a value in the request cannot be stored (for "+subject+")")
	default:
		s.log.Error("request failed", "op", op, "subject", subject, "err", err)
		// The cause stays in the log: it may name hosts, tables or SQL.
		return problem(http.StatusInternalServerError, "", "internal server error")
	}
	s.log.Debug("request refused", "op", op, "subject", subject, "err", err)
	return out
}

// retryLater is a problem with a Retry-After header (seconds).
func retryLater(status int, kind, detail, seconds string) error {
	return huma.ErrorWithHeaders(problem(status, kind, detail), http.Header{"Retry-After": {seconds}})
}

// databaseUnavailable is the 503 for a database that is restarting,
// unreachable or timed out.
func databaseUnavailable() error {
	return retryLater(http.StatusServiceUnavailable, kindDatabaseUnavailable,
		"the database is unavailable just now; retry later", retryAfter())
}

// retryAfter is the Retry-After for "no device now": a few seconds,
// jittered so clients that timed out together do not retry in lockstep.
func retryAfter() string {
	return strconv.Itoa(1 + rand.IntN(5))
}

// writeProblem writes e as problem+json outside Huma's handler path (in
// middleware, where returning an error is not an option).
func writeProblem(api huma.API, ctx huma.Context, e huma.StatusError) {
	ctx.SetHeader("Content-Type", "application/problem+json")
	ctx.SetStatus(e.GetStatus())
	_ = api.Marshal(ctx.BodyWriter(), "application/json", e) // the client may be gone; nothing to do
}

// withProblemFallback makes the mux's own 404 and 405 answers (no route,
// wrong method) problem+json like every other error, instead of text/plain.
func withProblemFallback(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r) // ServeHTTP, not h: it sets the path values
			return
		}
		// Let the mux's handler decide 404 versus 405 (and set Allow), but
		// keep only its status.
		rec := &statusRecorder{header: w.Header(), status: http.StatusNotFound}
		h.ServeHTTP(rec, r)
		detail := "no such endpoint: " + r.URL.Path
		if rec.status == http.StatusMethodNotAllowed {
			detail = r.Method + " is not allowed on " + r.URL.Path
		}
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(rec.status)
		_ = huma.DefaultJSONFormat.Marshal(w, problem(rec.status, "", detail))
	})
}

// statusRecorder captures a status code and discards the body.
type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(status int)      { r.status = status }

// declareUnavailable documents on every operation that touches the
// database the 503 it answers while the database is restarting or
// unreachable (database-unavailable) or the instance is stopping
// (shutting-down), so generated SDKs type it. Operations that document a
// 503 of their own keep theirs.
func declareUnavailable(api huma.API) {
	for _, item := range api.OpenAPI().Paths {
		for _, op := range []*huma.Operation{item.Get, item.Post, item.Put, item.Patch, item.Delete} {
			if op == nil || isPublic(op) || op.Responses["503"] != nil {
				continue
			}
			op.Responses["503"] = &huma.Response{
				Description: "The database is unavailable just now, or this instance is shutting down; retry after Retry-After seconds.",
				Headers: map[string]*huma.Header{"Retry-After": {
					Description: "Seconds to wait before trying again.",
					Schema:      &huma.Schema{Type: huma.TypeInteger, Examples: []any{2}},
				}},
				Content: map[string]*huma.MediaType{"application/problem+json": {Schema: &huma.Schema{Ref: "#/components/schemas/ErrorModel"}}},
			}
		}
	}
}
