package client

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Problem types (RFC 9457 "type") of devalloc's own errors; they tell apart
// failures that share a status. Validation errors (422 about:blank, one
// entry per bad field in Errors) have an empty Type.
const (
	ProblemTypePrefix            = "urn:devalloc:problem:"
	ProblemNotFound              = ProblemTypePrefix + "not-found"
	ProblemDeviceExists          = ProblemTypePrefix + "device-exists"
	ProblemDeviceLeased          = ProblemTypePrefix + "device-leased"
	ProblemUnsatisfiableSelector = ProblemTypePrefix + "unsatisfiable-selector"
	ProblemLeaseEnded            = ProblemTypePrefix + "lease-ended"
	ProblemForbidden             = ProblemTypePrefix + "forbidden"
	ProblemNotYourLease          = ProblemTypePrefix + "not-your-lease"
	ProblemNoDeviceAvailable     = ProblemTypePrefix + "no-device-available"
	ProblemNotReady              = ProblemTypePrefix + "not-ready"
	ProblemUnauthorized          = ProblemTypePrefix + "unauthorized"
	ProblemPriorityTooHigh       = ProblemTypePrefix + "priority-too-high"
)

// Problem is an error answer of the API (any status that is not 2xx) as a
// Go error. Its fields come from the problem+json body when there is one.
type Problem struct {
	StatusCode int
	// Type is the problem type, "" for about:blank (or no problem body).
	Type   string
	Title  string
	Detail string
	// Errors lists the bad fields of a 422 validation failure.
	Errors []ErrorDetail
	// RetryAfter is the Retry-After header in seconds (503), 0 if absent.
	RetryAfter time.Duration
}

// Error is one line: the status and what the server said, e.g.
// "410 lease 0193... has ended (released)"; a validation failure lists its
// fields: "422 validation failed: body.labels.a b: label key must be ...".
func (p *Problem) Error() string {
	var b strings.Builder
	b.WriteString(strconv.Itoa(p.StatusCode))
	msg := p.Detail
	if msg == "" {
		msg = p.Title
	}
	if msg == "" {
		msg = http.StatusText(p.StatusCode)
	}
	if msg != "" {
		b.WriteString(" " + msg)
	}
	for i, e := range p.Errors {
		if i == 0 {
			b.WriteString(":")
		} else {
			b.WriteString(";")
		}
		if e.Location != nil && *e.Location != "" {
			b.WriteString(" " + *e.Location + ":")
		}
		if e.Message != nil {
			b.WriteString(" " + *e.Message)
		}
	}
	return strings.Join(strings.Fields(b.String()), " ")
}

// maxNonProblemBody is how much of a body that is not problem+json (say, a
// proxy's HTML page) an error quotes.
const maxNonProblemBody = 200

// CheckResponse returns nil when resp is a success (2xx) and a *Problem
// otherwise, filled from the problem+json body if there is one. Pass a
// generated response's HTTPResponse and Body.
func CheckResponse(resp *http.Response, body []byte) error {
	if resp == nil {
		return &Problem{Detail: "no response"}
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	p := &Problem{StatusCode: resp.StatusCode}
	if s, err := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After"))); err == nil && s >= 0 {
		p.RetryAfter = time.Duration(s) * time.Second
	}
	var m ErrorModel
	if strings.Contains(resp.Header.Get("Content-Type"), "json") && json.Unmarshal(body, &m) == nil {
		p.Type = deref(m.Type)
		if p.Type == "about:blank" {
			p.Type = ""
		}
		p.Title, p.Detail = deref(m.Title), deref(m.Detail)
		if m.Errors != nil {
			p.Errors = *m.Errors
		}
		return p
	}
	// Not from devalloc (a proxy, a load balancer): quote the start of it.
	text := strings.Join(strings.Fields(string(body)), " ")
	if len(text) > maxNonProblemBody {
		text = text[:maxNonProblemBody] + "..."
	}
	p.Detail = strings.TrimSpace(http.StatusText(resp.StatusCode) + " " + text)
	return p
}

// WithBearerToken sends key as "Authorization: Bearer <key>" with every
// request; an empty key sends no Authorization header.
func WithBearerToken(key string) ClientOption {
	return WithRequestEditorFn(func(_ context.Context, req *http.Request) error {
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		return nil
	})
}

// WithUserAgent sets the User-Agent of every request.
func WithUserAgent(ua string) ClientOption {
	return WithRequestEditorFn(func(_ context.Context, req *http.Request) error {
		req.Header.Set("User-Agent", ua)
		return nil
	})
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
