package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/db/devalloctype"
)

// keyCacheTTL is how long a verified key is trusted without asking the
// database again. A revoked key stops working within this time.
const keyCacheTTL = 2 * time.Second

// keyLookupTimeout bounds a key lookup, including the wait for a pool
// connection when the database is slow.
const keyLookupTimeout = 2 * time.Second

// keyRefreshTimeout bounds the lookup that refreshes a key verified
// within keyCacheGrace: when the database is slow (every connection stuck
// behind a lock), the request goes on with the cached key after this
// rather than spend its own time budget (an acquire's wait) on auth.
const keyRefreshTimeout = 250 * time.Millisecond

// keyCacheGrace is how long past its expiry a verified key is still
// trusted when the database cannot be asked (it is restarting, or every
// connection is stuck).
const keyCacheGrace = time.Minute

// keyCacheMax bounds the cache; past it, it starts over.
const keyCacheMax = 10000

// KeyLookup finds the API key for a secret; *db.KeyStore is one.
type KeyLookup interface {
	Authenticate(ctx context.Context, secret string) (db.APIKey, error)
}

// BearerAuth authenticates "Authorization: Bearer <key>" against keys.
// Verified keys are cached for keyCacheTTL (by a hash of the secret, never
// the secret itself), so a busy client costs one key lookup per couple of
// seconds rather than one per request.
func BearerAuth(keys KeyLookup) Authenticator {
	return newKeyCache(keys, keyCacheTTL).authenticate
}

type keyCache struct {
	keys    KeyLookup
	ttl     time.Duration
	mu      sync.Mutex
	entries map[[32]byte]cachedKey
}

func newKeyCache(keys KeyLookup, ttl time.Duration) *keyCache {
	return &keyCache{keys: keys, ttl: ttl, entries: map[[32]byte]cachedKey{}}
}

type cachedKey struct {
	key     db.APIKey
	expires time.Time
}

func (c *keyCache) authenticate(r *http.Request) (Principal, error) {
	secret, ok := bearerToken(r.Header.Get("Authorization"))
	if !ok {
		return Principal{}, unauthorized("missing API key: send Authorization: Bearer <key>")
	}
	fp := db.SecretFingerprint(secret)
	now := time.Now()
	c.mu.Lock()
	hit, found := c.entries[fp]
	c.mu.Unlock()
	if found && now.Before(hit.expires) {
		return principalOf(hit.key), nil
	}
	timeout := keyLookupTimeout
	if found && now.Sub(hit.expires) < keyCacheGrace {
		timeout = keyRefreshTimeout
	}
	lookupCtx, cancel := context.WithTimeout(r.Context(), timeout)
	key, err := c.keys.Authenticate(lookupCtx, secret)
	cancel()
	if errors.Is(err, devalloctype.ErrUnknownKey) {
		return Principal{}, unauthorized("unknown or revoked API key")
	}
	if err != nil && r.Context().Err() != nil {
		// The client went away during the lookup: not a server fault, and
		// nobody reads the answer. Quiet, or anyone could flood the logs
		// by hanging up, no key needed.
		return Principal{}, problem(statusClientClosedRequest, kindClientGone, "client closed the request")
	}
	if db.IsTransient(err) && found && now.Sub(hit.expires) < keyCacheGrace {
		// The database is slow or away: a key verified a moment ago is
		// still trusted, so auth adds no failures of its own to an outage.
		return principalOf(hit.key), nil
	}
	if db.IsTransient(err) {
		// The key cannot be checked while the database is away.
		return Principal{}, databaseUnavailable()
	}
	if err != nil {
		return Principal{}, err
	}
	c.mu.Lock()
	if len(c.entries) >= keyCacheMax {
		clear(c.entries)
	}
	c.entries[fp] = cachedKey{key: key, expires: now.Add(c.ttl)}
	c.mu.Unlock()
	return principalOf(key), nil
}

func principalOf(k db.APIKey) Principal {
	return Principal{Name: k.Name, Admin: k.Admin()}
}

// bearerToken extracts the token of a Bearer Authorization header (the
// scheme is case-insensitive, RFC 9110).
func bearerToken(header string) (string, bool) {
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// unauthorized is a 401 with the WWW-Authenticate challenge RFC 9110 asks for.
func unauthorized(detail string) error {
	return huma.ErrorWithHeaders(
		problem(http.StatusUnauthorized, kindUnauthorized, detail),
		http.Header{"WWW-Authenticate": {`Bearer realm="devalloc"`}},
	)
}

// kindUnauthorized is the problem type of a 401.
const kindUnauthorized = "unauthorized"

// bearerScheme names the security scheme in the spec.
const bearerScheme = "bearer"

// declareSecurity writes into the spec what principalMiddleware enforces:
// every operation that is not public needs a bearer key and may answer 401.
// It runs after registration, so no operation can be forgotten.
func declareSecurity(api huma.API) {
	spec := api.OpenAPI()
	if spec.Components.SecuritySchemes == nil {
		spec.Components.SecuritySchemes = map[string]*huma.SecurityScheme{}
	}
	spec.Components.SecuritySchemes[bearerScheme] = &huma.SecurityScheme{
		Type:        "http",
		Scheme:      "bearer",
		Description: "An API key from `devalloc keys create`, or the DEVALLOC_ADMIN_KEY given to `devalloc serve`.",
	}
	errSchema := &huma.Schema{Ref: "#/components/schemas/ErrorModel"}
	for _, item := range spec.Paths {
		for _, op := range []*huma.Operation{item.Get, item.Post, item.Put, item.Patch, item.Delete} {
			if op == nil || isPublic(op) {
				continue
			}
			op.Security = []map[string][]string{{bearerScheme: {}}}
			if op.Responses["401"] == nil {
				op.Responses["401"] = &huma.Response{
					Description: "Missing, unknown or revoked API key.",
					Headers: map[string]*huma.Header{"WWW-Authenticate": {
						Description: "The bearer challenge.",
						Schema:      &huma.Schema{Type: huma.TypeString},
					}},
					Content: map[string]*huma.MediaType{"application/problem+json": {Schema: errSchema}},
				}
			}
		}
	}
}
