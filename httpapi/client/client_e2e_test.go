package client_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/httpapi"
	"github.com/devalloc/devalloc/httpapi/apitest"
	"github.com/devalloc/devalloc/httpapi/client"
)

// These tests drive a real API server (httpapi.New on an allocator on a
// fresh PostgreSQL database) only through the generated client, so they
// prove the SDK generated from the 3.0 document can do everything a holder
// and an operator need, errors included.

// sdk is one server and clients for it with different keys.
type sdk struct {
	url   string
	admin *client.ClientWithResponses // admin key
	user  *client.ClientWithResponses // client key "ci"
	other *client.ClientWithResponses // client key "other"
	anon  *client.ClientWithResponses // no key
}

func newSDK(t *testing.T) *sdk {
	t.Helper()
	srv := apitest.Start(t, apitest.Options{})
	s := &sdk{url: srv.URL}
	s.admin = newClient(t, srv.URL, srv.Key(t, "admin", db.RoleAdmin))
	s.user = newClient(t, srv.URL, srv.Key(t, "ci", db.RoleClient))
	s.other = newClient(t, srv.URL, srv.Key(t, "other", db.RoleClient))
	s.anon = newClient(t, srv.URL, "")
	return s
}

func newClient(t *testing.T, url, key string) *client.ClientWithResponses {
	t.Helper()
	c, err := client.NewClientWithResponses(url, client.WithBearerToken(key))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ptr[T any](v T) *T { return &v }

// must takes a generated call's results and returns a function that fails
// the test on a transport error: r := must(c.GetLeaseWithResponse(ctx, id))(t).
func must[R any](r *R, err error) func(*testing.T) *R {
	return func(t *testing.T) *R {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
}

// wantStatus fails unless the response has status.
func wantStatus(t *testing.T, what string, resp *http.Response, body []byte, status int) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s: status %d, want %d: %s", what, resp.StatusCode, status, body)
	}
}

// wantProblem fails unless typed is the decoded problem of the response,
// with the status and problem type; it returns the CheckResponse error.
func wantProblem(t *testing.T, what string, typed *client.ErrorModel, resp *http.Response, body []byte, status int, typ string) *client.Problem {
	t.Helper()
	wantStatus(t, what, resp, body, status)
	if typed == nil {
		t.Fatalf("%s: the typed %d problem is nil: %s", what, status, body)
	}
	if typed.Status == nil || int(*typed.Status) != status || typed.Detail == nil || *typed.Detail == "" {
		t.Fatalf("%s: typed problem %+v does not match %s", what, typed, body)
	}
	var p *client.Problem
	if err := client.CheckResponse(resp, body); !errors.As(err, &p) {
		t.Fatalf("%s: CheckResponse = %v, want a *client.Problem", what, err)
	}
	if p.StatusCode != status || p.Type != typ {
		t.Fatalf("%s: problem %d %q, want %d %q (%s)", what, p.StatusCode, p.Type, status, typ, p)
	}
	return p
}

func (s *sdk) createDevice(t *testing.T, name, pool string, labels map[string]string) client.Device {
	t.Helper()
	req := client.CreateDeviceRequest{Name: name, Pool: &pool, Address: "127.0.0.1:1", Probe: ptr(client.CreateDeviceRequestProbeNone)}
	if labels != nil {
		req.Labels = &labels
	}
	r := must(s.admin.CreateDeviceWithResponse(t.Context(), req))(t)
	wantStatus(t, "create device "+name, r.HTTPResponse, r.Body, http.StatusCreated)
	if r.JSON201 == nil || r.JSON201.Name != name || r.JSON201.State != client.DeviceStateIdle {
		t.Fatalf("created device: %s", r.Body)
	}
	return *r.JSON201
}

func TestSDKDeviceAndLeaseLifecycle(t *testing.T) {
	s := newSDK(t)
	ctx := t.Context()
	s.createDevice(t, "pixel-1", "android", map[string]string{"model": "pixel-7"})
	s.createDevice(t, "board-1", "boards", nil)

	devs := must(s.user.ListDevicesWithResponse(ctx, &client.ListDevicesParams{Pool: ptr("android")}))(t)
	wantStatus(t, "list devices", devs.HTTPResponse, devs.Body, http.StatusOK)
	if len(devs.JSON200.Devices) != 1 || devs.JSON200.Devices[0].Labels["model"] != "pixel-7" {
		t.Fatalf("devices in android: %s", devs.Body)
	}

	acq := must(s.user.AcquireLeaseWithResponse(ctx, &client.AcquireLeaseParams{IdempotencyKey: ptr("job-1")},
		client.AcquireLeaseRequest{Pool: ptr("android"), Labels: &map[string]string{"model": "pixel-7"}, TTLSeconds: ptr[int64](60), Holder: ptr("job 1")}))(t)
	wantStatus(t, "acquire", acq.HTTPResponse, acq.Body, http.StatusCreated)
	lease := acq.JSON201
	if lease.Device.Name != "pixel-1" || lease.Owner != "ci" || lease.Holder != "job 1" || lease.ReleasedAt != nil || lease.EndReason != nil {
		t.Fatalf("lease: %s", acq.Body)
	}
	// (acquired_at and expires_at are two clock_timestamp() calls: they may
	// be a microsecond further apart than the TTL.)
	if got := lease.ExpiresAt.Sub(lease.AcquiredAt).Round(time.Millisecond); got != 60*time.Second {
		t.Errorf("lease lasts %s, want 1m", got)
	}
	if acq.Headers201 == nil || acq.Headers201.Location == nil || *acq.Headers201.Location != "/v1/leases/"+lease.ID.String() {
		t.Errorf("Location header: %+v", acq.Headers201)
	}

	dev := must(s.user.GetDeviceWithResponse(ctx, "pixel-1"))(t)
	wantStatus(t, "get device", dev.HTTPResponse, dev.Body, http.StatusOK)
	if dev.JSON200.State != client.DeviceStateLeased || dev.JSON200.LeaseID == nil || *dev.JSON200.LeaseID != lease.ID {
		t.Fatalf("leased device: %s", dev.Body)
	}

	renewed := must(s.user.RenewLeaseWithResponse(ctx, lease.ID, client.RenewLeaseRequest{TTLSeconds: ptr[int64](120)}))(t)
	wantStatus(t, "renew", renewed.HTTPResponse, renewed.Body, http.StatusOK)
	if !renewed.JSON200.ExpiresAt.After(lease.ExpiresAt) {
		t.Errorf("renew did not move expires_at: %s -> %s", lease.ExpiresAt, renewed.JSON200.ExpiresAt)
	}

	got := must(s.user.GetLeaseWithResponse(ctx, lease.ID))(t)
	wantStatus(t, "get lease", got.HTTPResponse, got.Body, http.StatusOK)
	if !got.JSON200.ExpiresAt.Equal(renewed.JSON200.ExpiresAt) {
		t.Errorf("get lease: expires_at %s, want %s", got.JSON200.ExpiresAt, renewed.JSON200.ExpiresAt)
	}

	active := must(s.user.ListLeasesWithResponse(ctx, &client.ListLeasesParams{Active: ptr(true), Pool: ptr("android")}))(t)
	wantStatus(t, "list leases", active.HTTPResponse, active.Body, http.StatusOK)
	if len(active.JSON200.Leases) != 1 || active.JSON200.Leases[0].ID != lease.ID {
		t.Fatalf("active leases: %s", active.Body)
	}

	pools := must(s.user.ListPoolsWithResponse(ctx))(t)
	wantStatus(t, "list pools", pools.HTTPResponse, pools.Body, http.StatusOK)
	counts := map[string]client.PoolSummary{}
	for _, p := range pools.JSON200.Pools {
		counts[p.Name] = p
	}
	if counts["android"].Leased != 1 || counts["boards"].Idle != 1 {
		t.Fatalf("pools: %s", pools.Body)
	}

	rel := must(s.user.ReleaseLeaseWithResponse(ctx, lease.ID))(t)
	wantStatus(t, "release", rel.HTTPResponse, rel.Body, http.StatusNoContent)
	if err := client.CheckResponse(rel.HTTPResponse, rel.Body); err != nil {
		t.Fatalf("CheckResponse of a 204: %v", err)
	}
	again := must(s.user.ReleaseLeaseWithResponse(ctx, lease.ID))(t)
	wantStatus(t, "release again", again.HTTPResponse, again.Body, http.StatusNoContent)

	// Renewing an ended lease: 410, typed.
	gone := must(s.user.RenewLeaseWithResponse(ctx, lease.ID, client.RenewLeaseRequest{}))(t)
	p := wantProblem(t, "renew after release", gone.ApplicationProblemJSON410, gone.HTTPResponse, gone.Body,
		http.StatusGone, client.ProblemLeaseEnded)
	if want := "410 lease " + lease.ID.String() + " has ended (released)"; p.Error() != want {
		t.Errorf("problem line %q, want %q", p.Error(), want)
	}

	ended := must(s.user.GetLeaseWithResponse(ctx, lease.ID))(t)
	if ended.JSON200 == nil || ended.JSON200.ReleasedAt == nil || ended.JSON200.EndReason == nil || *ended.JSON200.EndReason != "released" {
		t.Fatalf("released lease: %s", ended.Body)
	}

	// Admin operations: maintenance, then delete.
	upd := must(s.admin.UpdateDeviceWithResponse(ctx, "board-1",
		client.UpdateDeviceRequest{State: ptr(client.UpdateDeviceRequestStateMaintenance), Reason: ptr("cracked")}))(t)
	wantStatus(t, "update device", upd.HTTPResponse, upd.Body, http.StatusOK)
	if upd.JSON200.State != client.DeviceStateMaintenance || upd.JSON200.StateReason != "cracked" {
		t.Fatalf("device in maintenance: %s", upd.Body)
	}
	del := must(s.admin.DeleteDeviceWithResponse(ctx, "board-1", nil))(t)
	wantStatus(t, "delete device", del.HTTPResponse, del.Body, http.StatusNoContent)
}

func TestSDKAcquireWaitsUntilARelease(t *testing.T) {
	s := newSDK(t)
	ctx := t.Context()
	s.createDevice(t, "only", "solo", nil)
	first := must(s.user.AcquireLeaseWithResponse(ctx, nil, client.AcquireLeaseRequest{Pool: ptr("solo")}))(t)
	wantStatus(t, "first acquire", first.HTTPResponse, first.Body, http.StatusCreated)

	type result struct {
		r   *client.AcquireLeaseResponse
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := s.other.AcquireLeaseWithResponse(ctx, nil, client.AcquireLeaseRequest{Pool: ptr("solo"), WaitSeconds: ptr[int64](20)})
		done <- result{r, err}
	}()

	// The second acquire is parked on the server before the release.
	waitFor(t, "the second acquire to wait", func() bool {
		r, err := s.admin.ListPoolsWithResponse(ctx)
		return err == nil && r.JSON200 != nil && len(r.JSON200.Pools) == 1 && r.JSON200.Pools[0].Waiting == 1
	})
	select {
	case res := <-done:
		t.Fatalf("second acquire returned while the device was leased: %v %s", res.err, res.r.Body)
	default:
	}

	released := time.Now()
	rel := must(s.user.ReleaseLeaseWithResponse(ctx, first.JSON201.ID))(t)
	wantStatus(t, "release", rel.HTTPResponse, rel.Body, http.StatusNoContent)

	select {
	case res := <-done:
		second := must(res.r, res.err)(t)
		wantStatus(t, "woken acquire", second.HTTPResponse, second.Body, http.StatusCreated)
		if second.JSON201.Device.Name != "only" || second.JSON201.Owner != "other" ||
			second.JSON201.FencingToken <= first.JSON201.FencingToken {
			t.Fatalf("woken acquire got %s (first had fencing token %d)", second.Body, first.JSON201.FencingToken)
		}
		if waited := time.Since(released); waited > 5*time.Second {
			t.Errorf("woken %s after the release", waited)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the waiting acquire was not woken by the release")
	}
}

func TestSDKTypedErrors(t *testing.T) {
	s := newSDK(t)
	ctx := t.Context()
	s.createDevice(t, "busy", "android", map[string]string{"os": "14"})
	held := must(s.user.AcquireLeaseWithResponse(ctx, nil, client.AcquireLeaseRequest{Pool: ptr("android")}))(t)
	wantStatus(t, "acquire", held.HTTPResponse, held.Body, http.StatusCreated)

	t.Run("422 unsatisfiable selector", func(t *testing.T) {
		r := must(s.user.AcquireLeaseWithResponse(ctx, nil,
			client.AcquireLeaseRequest{Pool: ptr("android"), Labels: &map[string]string{"os": "15"}, WaitSeconds: ptr[int64](30)}))(t)
		wantProblem(t, "acquire", r.ApplicationProblemJSON422, r.HTTPResponse, r.Body,
			http.StatusUnprocessableEntity, client.ProblemUnsatisfiableSelector)
	})

	t.Run("422 bad field", func(t *testing.T) {
		r := must(s.user.AcquireLeaseWithResponse(ctx, nil,
			client.AcquireLeaseRequest{Pool: ptr("android"), Labels: &map[string]string{"bad key": "x"}}))(t)
		p := wantProblem(t, "acquire", r.ApplicationProblemJSON422, r.HTTPResponse, r.Body, http.StatusUnprocessableEntity, "")
		if len(p.Errors) != 1 || p.Errors[0].Location == nil || *p.Errors[0].Location != "body.labels.bad key" {
			t.Fatalf("field errors: %s", r.Body)
		}
		if !strings.Contains(p.Error(), "body.labels.bad key: label key must be") {
			t.Errorf("problem line %q does not name the field", p.Error())
		}
	})

	t.Run("503 with Retry-After when the wait runs out", func(t *testing.T) {
		start := time.Now()
		r := must(s.other.AcquireLeaseWithResponse(ctx, nil, client.AcquireLeaseRequest{Pool: ptr("android"), WaitSeconds: ptr[int64](1)}))(t)
		p := wantProblem(t, "acquire", r.ApplicationProblemJSON503, r.HTTPResponse, r.Body,
			http.StatusServiceUnavailable, client.ProblemNoDeviceAvailable)
		if time.Since(start) < time.Second {
			t.Errorf("answered after %s, before wait_seconds passed", time.Since(start))
		}
		if r.Headers503 == nil || r.Headers503.RetryAfter == nil || *r.Headers503.RetryAfter < 1 {
			t.Fatalf("typed Retry-After header: %+v", r.Headers503)
		}
		if p.RetryAfter != time.Duration(*r.Headers503.RetryAfter)*time.Second {
			t.Errorf("Problem.RetryAfter %s, header %d", p.RetryAfter, *r.Headers503.RetryAfter)
		}
	})

	t.Run("404", func(t *testing.T) {
		l := must(s.user.GetLeaseWithResponse(ctx, uuid.New()))(t)
		wantProblem(t, "get lease", l.ApplicationProblemJSON404, l.HTTPResponse, l.Body, http.StatusNotFound, client.ProblemNotFound)
		d := must(s.user.GetDeviceWithResponse(ctx, "nope"))(t)
		wantProblem(t, "get device", d.ApplicationProblemJSON404, d.HTTPResponse, d.Body, http.StatusNotFound, client.ProblemNotFound)
	})

	t.Run("409 duplicate device", func(t *testing.T) {
		r := must(s.admin.CreateDeviceWithResponse(ctx, client.CreateDeviceRequest{Name: "busy", Address: "127.0.0.1:1"}))(t)
		wantProblem(t, "create", r.ApplicationProblemJSON409, r.HTTPResponse, r.Body, http.StatusConflict, client.ProblemDeviceExists)
	})

	t.Run("401 without or with an unknown key", func(t *testing.T) {
		r := must(s.anon.ListPoolsWithResponse(ctx))(t)
		wantProblem(t, "no key", r.ApplicationProblemJSON401, r.HTTPResponse, r.Body, http.StatusUnauthorized, client.ProblemUnauthorized)
		if r.HTTPResponse.Header.Get("WWW-Authenticate") == "" {
			t.Error("401 without WWW-Authenticate")
		}
		bad := newClient(t, s.url, "dva_not-a-key")
		a := must(bad.AcquireLeaseWithResponse(ctx, nil, client.AcquireLeaseRequest{Pool: ptr("android")}))(t)
		wantProblem(t, "unknown key", a.ApplicationProblemJSON401, a.HTTPResponse, a.Body, http.StatusUnauthorized, client.ProblemUnauthorized)
	})

	t.Run("403 wrong role or not your lease", func(t *testing.T) {
		c := must(s.user.CreateDeviceWithResponse(ctx, client.CreateDeviceRequest{Name: "mine", Address: "127.0.0.1:1"}))(t)
		wantProblem(t, "client creates a device", c.ApplicationProblemJSON403, c.HTTPResponse, c.Body, http.StatusForbidden, client.ProblemForbidden)
		r := must(s.other.RenewLeaseWithResponse(ctx, held.JSON201.ID, client.RenewLeaseRequest{}))(t)
		wantProblem(t, "renew another key's lease", r.ApplicationProblemJSON403, r.HTTPResponse, r.Body, http.StatusForbidden, client.ProblemNotYourLease)
		d := must(s.other.ReleaseLeaseWithResponse(ctx, held.JSON201.ID))(t)
		wantProblem(t, "release another key's lease", d.ApplicationProblemJSON403, d.HTTPResponse, d.Body, http.StatusForbidden, client.ProblemNotYourLease)
	})

	t.Run("410 after an admin revoked the lease", func(t *testing.T) {
		rv := must(s.admin.ReleaseLeaseWithResponse(ctx, held.JSON201.ID))(t)
		wantStatus(t, "revoke", rv.HTTPResponse, rv.Body, http.StatusNoContent)
		r := must(s.user.ReleaseLeaseWithResponse(ctx, held.JSON201.ID))(t)
		p := wantProblem(t, "release", r.ApplicationProblemJSON410, r.HTTPResponse, r.Body, http.StatusGone, client.ProblemLeaseEnded)
		if !strings.Contains(p.Detail, "(revoked)") {
			t.Errorf("detail %q does not say revoked", p.Detail)
		}
	})
}

// A group of two in one acquire, seen in the line while it waits, and
// released in one call.
func TestSDKGroupAcquireAndRelease(t *testing.T) {
	s := newSDK(t)
	ctx := t.Context()
	// A group goes through the pool's line, which needs the instance
	// registered (its listener connected): ready.
	waitFor(t, "readiness", func() bool {
		r, err := s.anon.ReadyzWithResponse(ctx)
		return err == nil && r.StatusCode() == http.StatusOK
	})
	s.createDevice(t, "rack-1", "rack", nil)
	s.createDevice(t, "rack-2", "rack", nil)
	s.createDevice(t, "rack-3", "rack", nil)

	acq := must(s.user.AcquireLeaseWithResponse(ctx, nil,
		client.AcquireLeaseRequest{Pool: ptr("rack"), Count: ptr[int64](2), Holder: ptr("job 2")}))(t)
	wantStatus(t, "group acquire", acq.HTTPResponse, acq.Body, http.StatusCreated)
	first := acq.JSON201
	if first.GroupID == nil || first.Group == nil || len(*first.Group) != 2 || (*first.Group)[0].ID != first.ID {
		t.Fatalf("group acquire answered %s", acq.Body)
	}
	for _, l := range *first.Group {
		if l.GroupID == nil || *l.GroupID != *first.GroupID || l.Owner != "ci" {
			t.Fatalf("group lease %+v", l)
		}
	}

	// More priority than a client key may have: typed 403, and nothing
	// taken.
	pr := must(s.user.AcquireLeaseWithResponse(ctx, nil,
		client.AcquireLeaseRequest{Pool: ptr("rack"), Priority: ptr[int64](50)}))(t)
	wantProblem(t, "acquire with priority 50", pr.ApplicationProblemJSON403, pr.HTTPResponse, pr.Body,
		http.StatusForbidden, client.ProblemPriorityTooHigh)

	g := must(s.user.GetLeaseGroupWithResponse(ctx, *first.GroupID))(t)
	wantStatus(t, "get group", g.HTTPResponse, g.Body, http.StatusOK)
	if g.JSON200.ID != *first.GroupID || len(g.JSON200.Leases) != 2 {
		t.Fatalf("group: %s", g.Body)
	}
	other := must(s.other.ReleaseLeaseGroupWithResponse(ctx, *first.GroupID))(t)
	wantProblem(t, "release another key's group", other.ApplicationProblemJSON403, other.HTTPResponse, other.Body,
		http.StatusForbidden, client.ProblemNotYourLease)

	rel := must(s.user.ReleaseLeaseGroupWithResponse(ctx, *first.GroupID))(t)
	wantStatus(t, "release group", rel.HTTPResponse, rel.Body, http.StatusNoContent)
	devs := must(s.user.ListDevicesWithResponse(ctx, &client.ListDevicesParams{Pool: ptr("rack")}))(t)
	wantStatus(t, "list devices", devs.HTTPResponse, devs.Body, http.StatusOK)
	for _, d := range devs.JSON200.Devices {
		if d.State != client.DeviceStateIdle {
			t.Fatalf("after releasing the group: %s", devs.Body)
		}
	}
	q := must(s.user.GetQueueWithResponse(ctx, &client.GetQueueParams{Pool: ptr("rack")}))(t)
	wantStatus(t, "queue", q.HTTPResponse, q.Body, http.StatusOK)
	if len(q.JSON200.Queue) != 0 {
		t.Fatalf("queue with nobody waiting: %s", q.Body)
	}
}

// TestProblemTypesAreDocumented keeps the hand-written problem type
// constants in step with the ones the API documents.
func TestProblemTypesAreDocumented(t *testing.T) {
	spec, err := httpapi.OpenAPI("3.0")
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{
		client.ProblemNotFound, client.ProblemDeviceExists, client.ProblemDeviceLeased,
		client.ProblemUnsatisfiableSelector, client.ProblemLeaseEnded, client.ProblemForbidden,
		client.ProblemNotYourLease, client.ProblemNoDeviceAvailable, client.ProblemNotReady,
		client.ProblemPriorityTooHigh,
	} {
		kind := strings.TrimPrefix(typ, client.ProblemTypePrefix)
		if !strings.Contains(string(spec), "`"+kind+"`") {
			t.Errorf("problem type %q is not in the API description", typ)
		}
	}
}

// waitFor polls cond until it holds, or fails the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
