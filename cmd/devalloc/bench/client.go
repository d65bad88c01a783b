package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// client is the load generator's side of the HTTP API. The server,
// PostgreSQL and the bench share a few cores, so every cycle the client
// spends is taken from the system being measured: one Transport keeps a
// warm connection per concurrent request, request bodies are encoded once
// per scenario, and a 201 is decoded into the two fields a scenario needs.
type client struct {
	tr   *http.Transport
	hc   *http.Client
	auth []string // the Authorization header value, shared read-only
}

// Header values shared read-only by every request.
var contentJSON = []string{"application/json"}

// newClient returns a client that keeps up to conns idle connections per
// instance, so that conns concurrent requests never dial afresh.
func newClient(key string, conns int) *client {
	tr := &http.Transport{
		Proxy: nil, // loopback only; never an environment proxy
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:        0, // no total cap; the per-host cap below rules
		MaxIdleConnsPerHost: max(conns, 2),
		IdleConnTimeout:     90 * time.Second,
		// Bodies are a few hundred bytes on loopback: gzip would only cost CPU.
		DisableCompression: true,
		// No ResponseHeaderTimeout: a long-poll answers after up to its wait.
	}
	return &client{tr: tr, hc: &http.Client{Transport: tr}, auth: []string{"Bearer " + key}}
}

// close drops the idle connections, so the servers see the sockets go.
func (c *client) close() { c.tr.CloseIdleConnections() }

// acquired is what a scenario needs from a 201: the lease id (to release
// it) and the device name (to match handoffs).
type acquired struct {
	ID     string `json:"id"`
	Device struct {
		Name string `json:"name"`
	} `json:"device"`
}

// statusError is an answer other than the one a call expects.
type statusError struct {
	op     string
	status int
	detail string // the problem's detail (or the start of the body)
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%s: HTTP %d: %s", e.op, e.status, e.detail)
}

// bufPool recycles response buffers: a run reads millions of small bodies.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// do sends one request and reads the whole response body (so the
// connection goes back to the pool) into a pooled buffer that the caller
// must put back with bufPool.Put.
func (c *client) do(ctx context.Context, method, url string, body []byte) (int, *bytes.Buffer, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header = http.Header{"Authorization": c.auth}
	if body != nil {
		req.Header["Content-Type"] = contentJSON
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	// Bodies here are small; the cap only guards against a runaway one.
	if _, err := buf.ReadFrom(io.LimitReader(resp.Body, 1<<20)); err != nil {
		bufPool.Put(buf)
		return resp.StatusCode, nil, err
	}
	return resp.StatusCode, buf, nil
}

// call is do for calls that expect one status; any other is a statusError.
func (c *client) call(ctx context.Context, op, method, url string, body []byte, want int) (*bytes.Buffer, error) {
	status, buf, err := c.do(ctx, method, url, body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if status != want {
		detail := problemDetail(buf.Bytes())
		bufPool.Put(buf)
		return nil, &statusError{op: op, status: status, detail: detail}
	}
	return buf, nil
}

// acquire posts a pre-encoded acquire body to base and decodes the 201.
func (c *client) acquire(ctx context.Context, base string, body []byte) (acquired, error) {
	var a acquired
	buf, err := c.call(ctx, "acquire", http.MethodPost, base+"/v1/leases", body, http.StatusCreated)
	if err != nil {
		return a, err
	}
	defer bufPool.Put(buf)
	if err := json.Unmarshal(buf.Bytes(), &a); err != nil {
		return a, fmt.Errorf("acquire: decode lease: %w", err)
	}
	if a.ID == "" || a.Device.Name == "" {
		return a, fmt.Errorf("acquire: lease without id or device: %.200s", buf.Bytes())
	}
	return a, nil
}

// release ends a lease (204).
func (c *client) release(ctx context.Context, base, id string) error {
	buf, err := c.call(ctx, "release", http.MethodDelete, base+"/v1/leases/"+id, nil, http.StatusNoContent)
	if err != nil {
		return err
	}
	bufPool.Put(buf)
	return nil
}

// registerDevice posts a pre-encoded device (201).
func (c *client) registerDevice(ctx context.Context, base string, body []byte) error {
	buf, err := c.call(ctx, "register device", http.MethodPost, base+"/v1/devices", body, http.StatusCreated)
	if err != nil {
		return err
	}
	bufPool.Put(buf)
	return nil
}

// waiting is the number of acquires waiting on pool at the instance at
// base (GET /v1/pools counts the waiters of that instance only).
func (c *client) waiting(ctx context.Context, base, pool string) (int, error) {
	buf, err := c.call(ctx, "list pools", http.MethodGet, base+"/v1/pools", nil, http.StatusOK)
	if err != nil {
		return 0, err
	}
	defer bufPool.Put(buf)
	var list struct {
		Pools []struct {
			Name    string `json:"name"`
			Waiting int    `json:"waiting"`
		} `json:"pools"`
	}
	if err := json.Unmarshal(buf.Bytes(), &list); err != nil {
		return 0, fmt.Errorf("list pools: decode: %w", err)
	}
	for _, p := range list.Pools {
		if p.Name == pool {
			return p.Waiting, nil
		}
	}
	return 0, nil
}

// problemDetail is the most useful line of an error body: the problem's
// detail or title, else the body's start.
func problemDetail(body []byte) string {
	var p struct {
		Title  string `json:"title"`
		Detail string `json:"detail"`
	}
	if json.Unmarshal(body, &p) == nil && (p.Detail != "" || p.Title != "") {
		if p.Detail != "" {
			return p.Detail
		}
		return p.Title
	}
	s := strings.TrimSpace(string(body))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// acquireRequest is the body of POST /v1/leases.
type acquireRequest struct {
	Pool        string            `json:"pool"`
	Labels      map[string]string `json:"labels,omitempty"`
	WaitSeconds int               `json:"wait_seconds,omitempty"`
	TTLSeconds  int               `json:"ttl_seconds,omitempty"`
	Holder      string            `json:"holder,omitempty"`
}

// encode marshals a request body once, before the load starts.
func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only the bench's own plain structs are encoded here.
		panic(fmt.Sprintf("bench: encode %T: %v", v, err))
	}
	return b
}

// releaseTimeout bounds a release that must happen even when the run is
// being cancelled.
const releaseTimeout = 10 * time.Second

// releaseAnyway releases a lease even if ctx has ended: a lease left
// behind would keep its device from the next client until its TTL.
func releaseAnyway(ctx context.Context, c *client, base, id string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	return c.release(ctx, base, id)
}
