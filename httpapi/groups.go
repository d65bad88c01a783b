package httpapi

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db/devalloctype"
)

// The leases of a group acquire (count > 1) share a group id; these
// operations act on all of them at once, so a holder of several devices
// renews and releases them in one request, and one transaction.

type leaseGroupIDInput struct {
	ID string `path:"id" format:"uuid" doc:"Group id: the group_id of its leases." example:"01936b2f-0a1b-7c2d-8e3f-4a5b6c7d8e9f"`
}

type renewLeaseGroupInput struct {
	ID string `path:"id" format:"uuid" doc:"Group id: the group_id of its leases." example:"01936b2f-0a1b-7c2d-8e3f-4a5b6c7d8e9f"`
	// A pointer, so an empty body renews by the default TTL.
	Body *RenewLeaseRequest
}

type leaseGroupOutput struct {
	Body LeaseGroup
}

func (s *server) registerLeaseGroups(api huma.API) {
	tags := []string{"lease-groups"}
	huma.Register(api, huma.Operation{
		OperationID: "getLeaseGroup", Method: http.MethodGet, Path: "/v1/lease-groups/{id}", Tags: tags,
		Summary:     "Get a lease group",
		Description: "Every lease of a group acquire, active or ended, in device name order. A client key may read only its own groups.",
		Errors:      []int{http.StatusForbidden, http.StatusNotFound},
	}, s.getLeaseGroup)
	huma.Register(api, huma.Operation{
		OperationID: "renewLeaseGroup", Method: http.MethodPost, Path: "/v1/lease-groups/{id}/renew", Tags: tags,
		Summary: "Renew a lease group",
		Description: "Extends every active lease of the group to ttl_seconds from now, in one statement. " +
			"410 if none is left active (all released, expired or revoked).",
		MaxBodyBytes: s.maxBody,
		Errors:       []int{http.StatusForbidden, http.StatusNotFound, http.StatusGone},
	}, s.renewLeaseGroup)
	huma.Register(api, huma.Operation{
		OperationID: "releaseLeaseGroup", Method: http.MethodDelete, Path: "/v1/lease-groups/{id}", Tags: tags,
		Summary: "Release a lease group",
		Description: "Ends every active lease of the group in one transaction and frees their devices. " +
			"Releasing an already released group succeeds again; a group none of whose leases its owner " +
			"released (they expired or were revoked) answers 410. An admin releasing another key's group revokes it.",
		DefaultStatus: http.StatusNoContent,
		Errors:        []int{http.StatusForbidden, http.StatusNotFound, http.StatusGone},
	}, s.releaseLeaseGroup)
}

func (s *server) getLeaseGroup(ctx context.Context, in *leaseGroupIDInput) (*leaseGroupOutput, error) {
	id, leases, err := s.ownGroup(ctx, "getLeaseGroup", in.ID)
	if err != nil {
		return nil, err
	}
	return groupOutput(id, leases), nil
}

func (s *server) renewLeaseGroup(ctx context.Context, in *renewLeaseGroupInput) (*leaseGroupOutput, error) {
	var ttl int64
	if in.Body != nil {
		ttl = in.Body.TTLSeconds
	}
	if err := invalid(checkSeconds("body.ttl_seconds", ttl, s.alloc.Config().MaxTTL, "max TTL")); err != nil {
		return nil, err
	}
	id, leases, err := s.ownGroup(ctx, "renewLeaseGroup", in.ID)
	if err != nil {
		return nil, err
	}
	// The group's owner, not the caller: an admin may renew anyone's group,
	// as it may renew anyone's lease.
	renewed, err := s.alloc.RenewGroup(ctx, id, leases[0].Owner, time.Duration(ttl)*time.Second)
	if err == nil {
		return groupOutput(id, renewed), nil
	}
	if !errors.Is(err, devalloctype.ErrNotFound) {
		return nil, s.fail(ctx, "renewLeaseGroup", groupSubject(id), err)
	}
	// Nothing active and unlapsed is left: the group has ended, as a
	// single lease's renew would say (410). Read it again for why.
	if now, gerr := s.alloc.Group(ctx, id); gerr == nil {
		leases = now
	}
	return nil, s.groupEnded(ctx, "renewLeaseGroup", id, leases)
}

func (s *server) releaseLeaseGroup(ctx context.Context, in *leaseGroupIDInput) (*struct{}, error) {
	id, leases, err := s.ownGroup(ctx, "releaseLeaseGroup", in.ID)
	if err != nil {
		return nil, err
	}
	reason := devalloctype.EndReleased
	if leases[0].Owner != principal(ctx).Name {
		// Only an admin gets here (ownGroup checked): ending another key's
		// group is a revoke, and the history says so.
		reason = devalloctype.EndRevoked
	}
	after, err := s.alloc.EndGroup(ctx, id, reason)
	if err != nil {
		return nil, s.fail(ctx, "releaseLeaseGroup", groupSubject(id), err)
	}
	// As for a single lease: ending it again the same way succeeds again,
	// but a group that was lost entirely before this call (expired,
	// revoked) is 410, so its holder learns it had lost the devices.
	if slices.ContainsFunc(after, func(l devalloctype.Lease) bool { return l.EndReason == reason }) {
		return nil, nil
	}
	return nil, s.groupEnded(ctx, "releaseLeaseGroup", id, after)
}

// ownGroup loads the group and checks the caller may act on it. Its leases
// come from one acquire, so they have one owner, and it never changes.
func (s *server) ownGroup(ctx context.Context, op, rawID string) (uuid.UUID, []devalloctype.Lease, error) {
	id, err := uuid.Parse(rawID)
	if err != nil {
		// Huma's format check normally catches this first.
		return uuid.Nil, nil, invalid([]error{&huma.ErrorDetail{Location: "path.id", Message: "expected a UUID", Value: rawID}})
	}
	leases, err := s.alloc.Group(ctx, id)
	if err != nil {
		return uuid.Nil, nil, s.fail(ctx, op, groupSubject(id), err)
	}
	if err := mayUseLease(ctx, leases[0].Owner); err != nil {
		return uuid.Nil, nil, problem(http.StatusForbidden, kindNotYourLease, "this lease group belongs to another key")
	}
	return id, leases, nil
}

// groupEnded is the 410 for a group with nothing left to renew or release,
// naming how its leases ended (a lapsed lease not yet reaped counts as
// expired, as for a single lease).
func (s *server) groupEnded(ctx context.Context, op string, id uuid.UUID, leases []devalloctype.Lease) error {
	var reasons []string
	for _, l := range leases {
		r := l.EndReason
		if l.Active() {
			r = devalloctype.EndExpired
		}
		if !slices.Contains(reasons, r) {
			reasons = append(reasons, r)
		}
	}
	slices.Sort(reasons)
	s.log.Debug("request refused", "op", op, "subject", groupSubject(id), "err", "group has ended")
	return problem(http.StatusGone, kindLeaseEnded,
		groupSubject(id)+" has ended ("+strings.Join(reasons, ", ")+")")
}

func groupOutput(id uuid.UUID, leases []devalloctype.Lease) *leaseGroupOutput {
	out := &leaseGroupOutput{Body: LeaseGroup{ID: id, Leases: make([]Lease, 0, len(leases))}}
	for _, l := range leases {
		out.Body.Leases = append(out.Body.Leases, leaseFromDB(l))
	}
	return out
}

func groupSubject(id uuid.UUID) string { return "lease group " + id.String() }
