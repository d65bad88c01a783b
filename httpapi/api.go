// Package httpapi is devalloc's REST API: Huma v2 operations on net/http's
// ServeMux, serving the contract in DESIGN.md (paths, JSON shapes, status
// codes), with RFC 9457 problem+json errors and OpenAPI 3.1/3.0 specs.
//
// Handlers only translate between HTTP and the db package: every decision
// about devices and leases is made there, inside PostgreSQL transactions.
package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/adapters/humago"

	"github.com/devalloc/devalloc/db"
)

// Options tune the API. The zero value is usable.
type Options struct {
	// Logger receives server errors (at Error) and client-caused failures
	// (at Debug); nil means slog.Default().
	Logger *slog.Logger
	// Authenticate decides who each request comes from; nil means every
	// request is Anonymous (an admin), until API keys exist.
	Authenticate Authenticator
	// MaxBodyBytes caps a request body; 0 means DefaultMaxBodyBytes.
	// Larger bodies get 413.
	MaxBodyBytes int64
	// MaxWaitingPerKey caps the acquires with wait_seconds > 0 one API key
	// may have in progress at this instance; more get 429. 0 (or less)
	// means DefaultMaxWaitingPerKey.
	MaxWaitingPerKey int
	// MaxClientPriority is the highest acquire priority a client key may
	// ask for (admin keys may use up to 100); higher is refused with 403.
	// 0 means DefaultMaxClientPriority; a negative value allows none above
	// 0.
	MaxClientPriority int
	// Metrics, when set, are served at GET /metrics (Prometheus text
	// format, without authentication, like /healthz); pass the same value
	// as the allocator's db.Config.Observer.
	Metrics *Metrics
}

// DefaultMaxBodyBytes fits the largest valid request (32 labels of 63+256
// characters, a 1024-character address) many times over while keeping a
// misbehaving client from making the server buffer megabytes.
const DefaultMaxBodyBytes = 64 << 10

// APIVersion is the version of the HTTP contract shown in the OpenAPI info.
const APIVersion = "1.0.0"

func init() {
	// Huma validates JSON member names case-insensitively by default, like
	// encoding/json decodes them. Then {"name":"ok","NAME":"Bad Name!"}
	// passes validation on "name" while the decoder keeps the last,
	// unvalidated "NAME". Exact names only: anything else is an unknown
	// field (422). A process-wide setting, set before any request is
	// validated; devalloc serves no other Huma API.
	huma.ValidateStrictCasing = true
}

// server holds what the handlers need.
type server struct {
	alloc   *db.Allocator
	log     *slog.Logger
	maxBody int64
	waiting *waitLimiter
	// maxClientPriority is the resolved Options.MaxClientPriority.
	maxClientPriority int
}

// New returns the HTTP handler serving the whole API for alloc.
func New(alloc *db.Allocator, opts Options) http.Handler {
	mux, _ := build(alloc, opts)
	mux.Handle("GET /dashboard", dashboardHandler())
	mux.Handle("GET /dashboard/", dashboardHandler())
	if opts.Metrics != nil {
		log := opts.Logger
		if log == nil {
			log = slog.Default()
		}
		mux.Handle("GET /metrics", opts.Metrics.handler(alloc, log))
	}
	return withProblemFallback(mux)
}

// OpenAPI returns the API's spec as indented JSON: version "3.1" is what
// /openapi.json serves, "3.0" what /openapi-3.0.json serves (for generators
// that do not read 3.1 yet). It needs no database.
func OpenAPI(version string) ([]byte, error) {
	// Handlers are registered but never called, so no allocator is needed.
	_, api := build(nil, Options{})
	var (
		raw []byte
		err error
	)
	switch version {
	case "3.1":
		raw, err = api.OpenAPI().MarshalJSON()
	case "3.0":
		raw, err = api.OpenAPI().Downgrade()
	default:
		return nil, fmt.Errorf("unknown OpenAPI version %q (want 3.1 or 3.0)", version)
	}
	if err != nil {
		return nil, fmt.Errorf("render OpenAPI %s: %w", version, err)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, raw, "", "  "); err != nil {
		return nil, fmt.Errorf("indent OpenAPI %s: %w", version, err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// build creates the mux and the Huma API on it with every operation
// registered. New and OpenAPI share it so the spec is exactly what is served.
func build(alloc *db.Allocator, opts Options) (*http.ServeMux, huma.API) {
	s := &server{alloc: alloc, log: opts.Logger, maxBody: opts.MaxBodyBytes, waiting: newWaitLimiter(opts.MaxWaitingPerKey),
		maxClientPriority: clientPriorityCap(opts.MaxClientPriority)}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	authn := opts.Authenticate
	if authn == nil {
		authn = anonymous
	}

	mux := http.NewServeMux()
	api := humago.New(mux, config())
	// Middleware must be in place before operations are registered: Huma
	// captures the chain at registration.
	api.UseMiddleware(principalMiddleware(api, authn, s.log))
	api.UseMiddleware(textMiddleware(api, s.maxBody))

	s.registerDevices(api)
	s.registerLeases(api)
	s.registerLeaseGroups(api)
	s.registerPools(api)
	s.registerQueue(api)
	s.registerHealth(api)
	declareSecurity(api)
	declareUnavailable(api)
	return mux, api
}

func config() huma.Config {
	cfg := huma.DefaultConfig("devalloc", APIVersion)
	// The default config's create hook adds a "$schema" member and a Link
	// header to every response; the contract's JSON shapes are exact, so
	// leave them out.
	cfg.CreateHooks = nil
	cfg.Info.Description = "devalloc hands out devices (phones, lab boards, remote machines) " +
		"to one holder at a time, with PostgreSQL as the arbiter. Acquire a lease, " +
		"renew it while you work, release it when done.\n\n" +
		"Errors are RFC 9457 problem+json. devalloc's own problems carry a `type` " +
		"telling apart errors that share a status: " +
		"`urn:devalloc:problem:` + `not-found` (404), `device-exists` (409), `device-leased` (409), " +
		"`unsatisfiable-selector` (422), `lease-ended` (410), `forbidden` / `not-your-lease` (403), " +
		"`priority-too-high` (403: a client key asked for more acquire priority than it may), " +
		"`no-device-available` (503, with Retry-After), `not-ready` (503), " +
		"`idempotency-key-reused` (422), `too-many-waiting` (429, with Retry-After), " +
		"`unauthorized` (401, with WWW-Authenticate), `invalid-value` (422, a value the database refused), " +
		"`database-unavailable` (503, with Retry-After: the database is restarting or unreachable), " +
		"`shutting-down` (503, with Retry-After: this instance is stopping; retry, maybe elsewhere). " +
		"Invalid input is 422 with type about:blank and one entry per bad field in `errors`."
	cfg.Tags = []*huma.Tag{
		{Name: "devices", Description: "The devices devalloc hands out, and their state."},
		{Name: "leases", Description: "Acquire, renew and release devices."},
		{Name: "lease-groups", Description: "The leases of a group acquire (count > 1), renewed and released together."},
		{Name: "pools", Description: "Per-pool device counts."},
		{Name: "queue", Description: "The acquires waiting in each pool's line, in serving order."},
		{Name: "health", Description: "Liveness and readiness for orchestrators."},
	}
	return cfg
}
