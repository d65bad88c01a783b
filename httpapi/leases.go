package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/db/devalloctype"
)

// A malformed lease id is answered 422 (validation failed, location
// path.id) by Huma's uuid format check, before any handler runs: the
// request is wrong, not the lease missing.
// (Each input declares it itself: Huma ignores embedded structs of
// unexported types, so a shared unexported param struct would stay empty.)
type leaseIDInput struct {
	ID string `path:"id" format:"uuid" doc:"Lease id." example:"01936b2e-7f3a-7c1d-9b8e-2f4a5c6d7e8f"`
}

type acquireLeaseInput struct {
	IdempotencyKey string `header:"Idempotency-Key" maxLength:"255" doc:"Makes the acquire safe to retry: your requests with the same key get one lease between them (see the operation's description)." example:"3f6c1b2e-9a4d-4e8b-bc1a-7d2e5f9a0c31"`
	// A pointer, so an empty body is accepted: every field has a default.
	Body *AcquireLeaseRequest
}

type acquireLeaseOutput struct {
	Location string `header:"Location" doc:"The lease's URL."`
	Replayed string `header:"Idempotent-Replayed" doc:"true when the lease is the one an earlier request with the same Idempotency-Key got; absent otherwise."`
	Body     Lease
}

type listLeasesInput struct {
	Active bool   `query:"active" doc:"Only active leases." example:"true"`
	Pool   string `query:"pool" doc:"Only leases in this pool." example:"android"`
	Limit  int    `query:"limit" default:"100" minimum:"1" maximum:"1000" doc:"Page size: at most this many leases." example:"100"`
	Cursor string `query:"cursor" maxLength:"512" doc:"Opaque: the next_cursor of the previous page; absent for the first page." example:"eyJhY3F1aXJlZF9hdF91cyI6MTc2NDExOTI2MDAwMDAwMCwiaWQiOiIwMTkzNmIyZS03ZjNhLTdjMWQtOWI4ZS0yZjRhNWM2ZDdlOGYifQ"`
}

type renewLeaseInput struct {
	ID string `path:"id" format:"uuid" doc:"Lease id." example:"01936b2e-7f3a-7c1d-9b8e-2f4a5c6d7e8f"`
	// A pointer, so an empty body renews by the default TTL.
	Body *RenewLeaseRequest
}

type leaseOutput struct {
	Body Lease
}

func (s *server) registerLeases(api huma.API) {
	tags := []string{"leases"}
	huma.Register(api, huma.Operation{
		OperationID: "acquireLease", Method: http.MethodPost, Path: "/v1/leases", Tags: tags,
		Summary: "Acquire a device",
		Description: "Leases an idle device from the pool whose labels include the requested ones, " +
			"waiting up to wait_seconds for one to become free. 503 with Retry-After when none did; " +
			"422 when no registered device could ever match.\n\n" +
			"Retries: send an `Idempotency-Key` (any string up to 255 characters, new for each new request). " +
			"A retry with the same key by the same API key gets the same lease, as it is now (active, or ended " +
			"since), with 201 like the first answer and `Idempotent-Replayed: true`; a retry while the first " +
			"request is still waiting joins it, and both get its outcome, so a retry never takes a second device. " +
			"Only pool, labels, count, ttl_seconds and holder must match (wait_seconds and priority may differ); " +
			"the same key with a different request is refused with 422 `idempotency-key-reused`, changing nothing. " +
			"Keys are per API key and kept with the lease's history.\n\n" +
			"An API key may have a limited number of acquires waiting (wait_seconds > 0) at one server; " +
			"beyond that, 429 `too-many-waiting` with Retry-After.\n\n" +
			"Scheduling: each pool has one line, shared by every server instance. It is ordered by priority " +
			"with aging (a request that has waited long enough ranks like one of a higher priority), first come " +
			"first served within a priority. A new request never overtakes one already waiting: while others " +
			"wait, it joins the line even if a device it fits is idle. Client keys may ask for a priority up to " +
			"the server's client maximum (default 10; above it 403 `priority-too-high`), admin keys up to 100.\n\n" +
			"Groups: count > 1 leases that many devices all or nothing, never some of them; the answer is the " +
			"first lease with every lease of the group in `group`, all sharing `group_id`. " +
			"422 `unsatisfiable-selector` when fewer than count registered devices could ever match.",
		DefaultStatus: http.StatusCreated, MaxBodyBytes: s.maxBody,
		Errors: []int{http.StatusForbidden, http.StatusUnprocessableEntity, http.StatusTooManyRequests, http.StatusServiceUnavailable},
	}, s.acquireLease)
	documentRetryAfter(api, "/v1/leases", "429", "This API key has too many acquires waiting at this server.")
	documentRetryAfter(api, "/v1/leases", "503", "No matching device became free within wait_seconds (no-device-available); or the database is unavailable just now (database-unavailable), or this instance is shutting down (shutting-down).")
	huma.Register(api, huma.Operation{
		OperationID: "listLeases", Method: http.MethodGet, Path: "/v1/leases", Tags: tags,
		Summary: "List leases",
		Description: "Admins see every lease; clients see their own. Newest first, a page at a time: " +
			"when next_cursor is present, pass it as cursor (with the same filters) for the next page.",
	}, s.listLeases)
	huma.Register(api, huma.Operation{
		OperationID: "getLease", Method: http.MethodGet, Path: "/v1/leases/{id}", Tags: tags,
		Summary:     "Get a lease",
		Description: "The lease, active or ended. A client key may read only its own leases.",
		Errors:      []int{http.StatusForbidden, http.StatusNotFound},
	}, s.getLease)
	huma.Register(api, huma.Operation{
		OperationID: "renewLease", Method: http.MethodPost, Path: "/v1/leases/{id}/renew", Tags: tags,
		Summary:      "Renew a lease",
		Description:  "Extends an active lease to ttl_seconds from now. 410 if the lease has ended (expired, revoked, released).",
		MaxBodyBytes: s.maxBody,
		Errors:       []int{http.StatusForbidden, http.StatusNotFound, http.StatusGone},
	}, s.renewLease)
	huma.Register(api, huma.Operation{
		OperationID: "releaseLease", Method: http.MethodDelete, Path: "/v1/leases/{id}", Tags: tags,
		Summary: "Release a lease",
		Description: "Ends the lease and frees its device. Releasing an already released lease succeeds again; " +
			"a lease that expired or was revoked answers 410, so its holder learns it had lost the device. " +
			"An admin releasing another key's lease revokes it.",
		DefaultStatus: http.StatusNoContent,
		Errors:        []int{http.StatusForbidden, http.StatusNotFound, http.StatusGone},
	}, s.releaseLease)
}

// documentRetryAfter adds the Retry-After header to the status response
// Huma generated for path's POST (Errors responses carry no headers).
func documentRetryAfter(api huma.API, path, status, description string) {
	item := api.OpenAPI().Paths[path]
	if item == nil || item.Post == nil || item.Post.Responses[status] == nil {
		return
	}
	resp := item.Post.Responses[status]
	resp.Description = description
	resp.Headers = map[string]*huma.Header{"Retry-After": {
		Description: "Seconds to wait before trying again.",
		Schema:      &huma.Schema{Type: huma.TypeInteger, Examples: []any{2}},
	}}
}

func (s *server) acquireLease(ctx context.Context, in *acquireLeaseInput) (*acquireLeaseOutput, error) {
	var b AcquireLeaseRequest
	if in.Body != nil {
		b = *in.Body
	}
	if b.Pool == "" {
		b.Pool = "default"
	}
	// An absent body gets no schema defaults: one device, as count 1.
	b.Count = max(b.Count, 1)
	cfg := s.alloc.Config()
	errs := checkLabels("body.labels", b.Labels)
	errs = append(errs, checkText("body.holder", b.Holder)...)
	errs = append(errs, checkSeconds("body.wait_seconds", b.WaitSeconds, cfg.MaxWait, "max wait")...)
	errs = append(errs, checkSeconds("body.ttl_seconds", b.TTLSeconds, cfg.MaxTTL, "max TTL")...)
	if err := invalid(errs); err != nil {
		return nil, err
	}
	// Before anything touches the database: a refused priority must not
	// leave a place in the line or a lease behind.
	if err := s.mayUsePriority(ctx, b.Priority); err != nil {
		return nil, err
	}
	owner := principal(ctx).Name
	if b.WaitSeconds > 0 {
		done, ok := s.waiting.enter(owner)
		if !ok {
			s.log.Debug("request refused: too many acquires waiting", "op", "acquireLease", "owner", owner)
			return nil, s.waiting.tooManyWaiting()
		}
		defer done()
	}
	lease, replayed, err := s.alloc.AcquireOrReplay(ctx, db.AcquireRequest{
		Selector:       devalloctype.Selector{Pool: b.Pool, Labels: devalloctype.Labels(b.Labels)},
		Wait:           time.Duration(b.WaitSeconds) * time.Second,
		TTL:            time.Duration(b.TTLSeconds) * time.Second,
		Owner:          owner,
		Holder:         b.Holder,
		IdempotencyKey: in.IdempotencyKey,
		Count:          b.Count,
		Priority:       b.Priority,
	})
	if err != nil {
		if b.Count > 1 && errors.Is(err, devalloctype.ErrUnsatisfiable) && ctx.Err() == nil {
			// Devices may match, just not enough of them: say so, or the
			// client looks for a typo in its labels.
			s.log.Debug("request refused", "op", "acquireLease", "subject", selectorSubject(b.Pool, b.Labels), "err", err)
			return nil, problem(http.StatusUnprocessableEntity, kindUnsatisfiable, fmt.Sprintf(
				"fewer than %d registered devices match %s, in any state, so a group of %d could never be leased",
				b.Count, selectorSubject(b.Pool, b.Labels), b.Count))
		}
		return nil, s.fail(ctx, "acquireLease", selectorSubject(b.Pool, b.Labels), err)
	}
	out := &acquireLeaseOutput{Location: leaseURL(lease.ID), Body: leaseFromDB(lease)}
	if replayed {
		out.Replayed = "true"
	}
	return out, nil
}

func (s *server) listLeases(ctx context.Context, in *listLeasesInput) (*struct{ Body LeaseList }, error) {
	after, err := leaseAfter(in.Cursor)
	if err != nil {
		return nil, err
	}
	f := db.LeaseFilter{ActiveOnly: in.Active, Pool: in.Pool, After: after, Limit: in.Limit}
	if p := principal(ctx); !p.Admin {
		f.Owner = p.Name
		if f.Owner == "" {
			// No identity means no leases, not everyone's.
			return &struct{ Body LeaseList }{Body: LeaseList{Leases: []Lease{}}}, nil
		}
	}
	page, err := s.alloc.ListLeasesPage(ctx, f)
	if err != nil {
		return nil, s.fail(ctx, "listLeases", "leases", err)
	}
	out := &struct{ Body LeaseList }{Body: LeaseList{
		Leases:     make([]Lease, 0, len(page.Leases)),
		NextCursor: nextLeaseCursor(page.Next),
	}}
	for _, l := range page.Leases {
		out.Body.Leases = append(out.Body.Leases, leaseFromDB(l))
	}
	return out, nil
}

func (s *server) getLease(ctx context.Context, in *leaseIDInput) (*leaseOutput, error) {
	lease, err := s.ownLease(ctx, "getLease", in.ID)
	if err != nil {
		return nil, err
	}
	return &leaseOutput{Body: leaseFromDB(lease)}, nil
}

func (s *server) renewLease(ctx context.Context, in *renewLeaseInput) (*leaseOutput, error) {
	var ttl int64
	if in.Body != nil {
		ttl = in.Body.TTLSeconds
	}
	if err := invalid(checkSeconds("body.ttl_seconds", ttl, s.alloc.Config().MaxTTL, "max TTL")); err != nil {
		return nil, err
	}
	lease, err := s.ownLease(ctx, "renewLease", in.ID)
	if err != nil {
		return nil, err
	}
	renewed, err := s.alloc.Renew(ctx, lease.ID, time.Duration(ttl)*time.Second)
	if err != nil {
		return nil, s.fail(ctx, "renewLease", leaseSubject(lease.ID), err)
	}
	return &leaseOutput{Body: leaseFromDB(renewed)}, nil
}

func (s *server) releaseLease(ctx context.Context, in *leaseIDInput) (*struct{}, error) {
	// The common case first: the caller ends its own active lease, in one
	// statement that checks ownership itself. Anything else (someone
	// else's lease, one already ended, an unknown id) takes the path below,
	// which tells those apart.
	if id, err := uuid.Parse(in.ID); err == nil && principal(ctx).Name != "" {
		done, err := s.alloc.ReleaseOwn(ctx, id, principal(ctx).Name)
		if err != nil {
			return nil, s.fail(ctx, "releaseLease", leaseSubject(id), err)
		}
		if done {
			return nil, nil
		}
	}
	lease, err := s.ownLease(ctx, "releaseLease", in.ID)
	if err != nil {
		return nil, err
	}
	end := s.alloc.Release
	if lease.Owner != principal(ctx).Name {
		// Only an admin gets here (ownLease checked): ending another key's
		// lease is a revoke, and the history says so.
		end = s.alloc.Revoke
	}
	if _, err := end(ctx, lease.ID); err != nil {
		return nil, s.fail(ctx, "releaseLease", leaseSubject(lease.ID), err)
	}
	return nil, nil
}

// ownLease loads the lease and checks the caller may act on it. The owner
// never changes, so checking before the renew/release is not racy.
func (s *server) ownLease(ctx context.Context, op, rawID string) (devalloctype.Lease, error) {
	id, err := uuid.Parse(rawID)
	if err != nil {
		// Huma's format check normally catches this first.
		return devalloctype.Lease{}, invalid([]error{&huma.ErrorDetail{Location: "path.id", Message: "expected a UUID", Value: rawID}})
	}
	lease, err := s.alloc.GetLease(ctx, id)
	if err != nil {
		return devalloctype.Lease{}, s.fail(ctx, op, leaseSubject(id), err)
	}
	if err := mayUseLease(ctx, lease.Owner); err != nil {
		return devalloctype.Lease{}, err
	}
	return lease, nil
}

func leaseSubject(id uuid.UUID) string { return "lease " + id.String() }

func leaseURL(id uuid.UUID) string { return "/v1/leases/" + id.String() }

// selectorSubject names what an acquire asked for, for its error details.
func selectorSubject(pool string, labels Labels) string {
	s := "pool " + strconv.Quote(pool)
	if len(labels) > 0 {
		b, _ := json.Marshal(labels) // sorted keys; a map of strings always marshals
		s += " with labels " + string(b)
	}
	return s
}
