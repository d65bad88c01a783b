// Package probe checks that a device really answers before devalloc hands
// it out.
//
// The allocator probes a device while it holds the device's row lock inside
// a transaction, so a probe must never run longer than a hard deadline: a
// dead device may cost one probe timeout, never a stuck transaction. Probe
// errors are stored verbatim as the device's state_reason, so they are kept
// short and readable ("tcp 10.0.0.1:22: connection refused") while still
// wrapping the underlying error for errors.Is / errors.As.
//
// Two outcomes must stay distinguishable for the allocator:
//
//   - the caller's context ended (the client went away): the error wraps
//     ctx.Err(), so errors.Is(err, context.Canceled) holds when ctx was
//     cancelled. The device is not to blame and must not be taken offline.
//   - the probe's own deadline passed: the device did not answer in time.
//     That is a device failure; the error never satisfies
//     errors.Is(err, context.Canceled).
package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Kind names a probe as stored in devalloc.devices.probe.
type Kind string

// The probe kinds; they must match the CHECK constraint on
// devalloc.devices.probe.
const (
	// TCP connects to address (host:port); the device answers if a TCP
	// connection is established. The connection is closed straight away.
	TCP Kind = "tcp"
	// HTTP sends GET to address; the device answers if the status is 2xx.
	// address is a full http:// or https:// URL, or host:port[/path], which
	// is taken as http://host:port[/path].
	HTTP Kind = "http"
	// None always succeeds without any I/O, for devices that cannot be
	// probed.
	None Kind = "none"
)

// Valid reports whether k is one of the kinds above.
func (k Kind) Valid() bool {
	switch k {
	case TCP, HTTP, None:
		return true
	}
	return false
}

// Prober checks one device address.
type Prober interface {
	Probe(ctx context.Context, kind Kind, address string) error
}

// DefaultTimeout is the probe deadline used when Network.Timeout is zero.
// It is short because the allocator holds a row lock for the whole probe.
const DefaultTimeout = 2 * time.Second

// maxBody is how much of an HTTP response body a probe reads. Only the
// status matters; the bound keeps a device that streams a large (or
// endless) body from costing more than a few KiB.
const maxBody = 4 << 10

// Default is the real network prober with the default timeout.
var Default Prober = &Network{}

// Compile-time checks that both implementations satisfy Prober.
var (
	_ Prober = (*Network)(nil)
	_ Prober = Func(nil)
)

// Network is the real network prober. The zero value is ready to use, and a
// nil *Network behaves like the zero value.
type Network struct {
	// Timeout is the hard deadline of one probe, applied on top of the
	// caller's context (the earlier of the two wins). Zero or negative
	// means DefaultTimeout.
	Timeout time.Duration
}

// httpClient is shared by all HTTP probes. It is dedicated to probing
// (http.DefaultClient can be reconfigured by anyone in the process) and
// configured so that a probe measures the device and nothing else:
//
//   - no redirects: a 3xx means the device did not answer the probe URL
//     with success, and following it could lead anywhere (a login page on
//     another host). The 3xx is returned and reported as a failure.
//   - no keep-alives: a pooled connection would let the next probe succeed
//     on a stale connection and would hold sockets open to devices that
//     are handed to holders; each probe dials afresh.
//   - no proxy: like the tcp probe, an http probe must reach the device
//     directly; a proxy from the environment would answer on its behalf.
//   - no client-level timeouts: the per-probe context is the one deadline,
//     covering DNS, dial, TLS, headers and body alike.
var httpClient = &http.Client{
	Transport: &http.Transport{
		Proxy:                  nil,
		DialContext:            (&net.Dialer{}).DialContext,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
	},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// timeout returns the effective probe deadline.
func (n *Network) timeout() time.Duration {
	if n == nil || n.Timeout <= 0 {
		return DefaultTimeout
	}
	return n.Timeout
}

// Probe checks that the device at address answers a probe of the given
// kind within n.Timeout (and before ctx ends). It returns nil if it does.
//
// If ctx ends first, the error wraps ctx.Err(): check
// errors.Is(err, context.Canceled) (or ctx.Err()) before blaming the device.
// If the probe deadline passes first, the error reads
// "<kind> <address>: no answer within <timeout>" and is a device failure.
func (n *Network) Probe(ctx context.Context, kind Kind, address string) error {
	switch kind {
	case None:
		return nil
	case TCP, HTTP:
	default:
		return fmt.Errorf("unknown probe kind %q", string(kind))
	}
	// Don't touch the network for a caller that has already gone.
	if err := ctx.Err(); err != nil {
		return callerGone(kind, address, err, nil)
	}

	timeout := n.timeout()
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var err error
	switch kind {
	case TCP:
		err = probeTCP(pctx, address)
	case HTTP:
		err = probeHTTP(pctx, address)
	}
	if err == nil {
		return nil
	}

	// Attribute the failure by which context ended, not by the shape of
	// err: the net and http packages report context expiry in several
	// ways, and a failure racing the deadline should count as the
	// deadline. The caller's context is checked first because pctx is
	// derived from it and is therefore done whenever ctx is.
	if cerr := ctx.Err(); cerr != nil {
		return callerGone(kind, address, cerr, err)
	}
	if pctx.Err() != nil {
		e := &Error{Kind: kind, Address: address, Reason: "no answer within " + timeout.String()}
		e.errs = append(e.errs, context.DeadlineExceeded)
		// Keep the underlying error for errors.As, unless it claims a
		// cancellation: a probe timeout must never look like the client
		// going away.
		if !errors.Is(err, context.Canceled) {
			e.errs = append(e.errs, err)
		}
		return e
	}
	if _, ok := err.(*Error); ok {
		return err // already formatted (e.g. HTTP status)
	}
	return &Error{Kind: kind, Address: address, Reason: reason(err), errs: []error{err}}
}

// callerGone builds the error for a probe abandoned because the caller's
// context ended. It wraps ctxErr so errors.Is(err, context.Canceled) (or
// context.DeadlineExceeded for a caller deadline) holds regardless of how
// the network code reported it.
func callerGone(kind Kind, address string, ctxErr, err error) *Error {
	r := "probe cancelled"
	if errors.Is(ctxErr, context.DeadlineExceeded) {
		r = "caller's deadline passed before the device answered"
	}
	e := &Error{Kind: kind, Address: address, Reason: r, errs: []error{ctxErr}}
	if err != nil {
		e.errs = append(e.errs, err)
	}
	return e
}

// probeTCP dials address and closes the connection. Note that a listening
// socket whose process never calls accept still completes the handshake
// (the kernel queues it in the backlog), so a tcp probe proves that
// something listens on the port, not that the service is healthy; use an
// http probe for that.
func probeTCP(ctx context.Context, address string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", address)
	if err != nil {
		return err
	}
	// The device answered; an error closing our end says nothing about it.
	_ = conn.Close()
	return nil
}

// probeHTTP sends GET to address and requires a 2xx status.
func probeHTTP(ctx context.Context, address string) error {
	target, err := httpURL(address)
	if err != nil {
		return &Error{Kind: HTTP, Address: address, Reason: err.Error(), errs: []error{err}}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return &Error{Kind: HTTP, Address: address, Reason: reason(err), errs: []error{err}}
	}
	// Lets device owners recognise (and filter) probe traffic in their logs.
	req.Header.Set("User-Agent", "devalloc-probe")

	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	// Read a bounded amount of the body before closing so that a device
	// sees its response consumed rather than a reset mid-write; with
	// keep-alives off there is no connection to reuse, so nothing more is
	// needed. Read errors are irrelevant: the status has already answered.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
	_ = resp.Body.Close()

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &Error{Kind: HTTP, Address: address, Reason: fmt.Sprintf("status %d", resp.StatusCode)}
	}
	return nil
}

// httpURL turns a stored http probe address into a URL: full http(s) URLs
// are used as they are, host:port[/path] gets an http:// prefix.
func httpURL(address string) (string, error) {
	target := address
	lower := strings.ToLower(address)
	switch {
	case strings.HasPrefix(lower, "http://"), strings.HasPrefix(lower, "https://"):
	case strings.Contains(address, "://"):
		scheme, _, _ := strings.Cut(address, "://")
		return "", fmt.Errorf("unsupported URL scheme %q (want http or https)", scheme)
	default:
		target = "http://" + address
	}
	u, err := url.Parse(target)
	if err != nil {
		// url.Error repeats the whole URL, which Error already shows.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			return "", fmt.Errorf("invalid URL: %w", uerr.Err)
		}
		return "", fmt.Errorf("invalid URL: %w", err)
	}
	if u.Host == "" {
		return "", errors.New("invalid URL: no host")
	}
	return target, nil
}

// reason extracts the short, human part of a network error. The standard
// errors repeat the operation and the address ("Get \"http://x\": dial tcp
// 10.0.0.1:80: connect: connection refused"), and Error already prefixes
// kind and address, so only the innermost cause is kept.
func reason(err error) string {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "connection closed without a response"
	}
	var sysErr *os.SyscallError
	if errors.As(err, &sysErr) {
		return sysErr.Err.Error() // e.g. "connection refused", "no route to host"
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return "lookup " + dnsErr.Name + ": " + dnsErr.Err // e.g. "lookup foo: no such host"
	}
	var addrErr *net.AddrError
	if errors.As(err, &addrErr) {
		return addrErr.Err // e.g. "missing port in address"
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Err != nil {
		return opErr.Err.Error()
	}
	var urlErr *url.Error
	if errors.As(err, &urlErr) && urlErr.Err != nil {
		return urlErr.Err.Error() // e.g. TLS certificate errors
	}
	return err.Error()
}

// Error is a failed probe. Its message is "<kind> <address>: <reason>", short
// enough to store as the device's state_reason. It unwraps to the underlying
// errors (including ctx.Err() when the caller's context ended).
type Error struct {
	Kind    Kind
	Address string
	Reason  string
	errs    []error
}

func (e *Error) Error() string {
	return string(e.Kind) + " " + e.Address + ": " + e.Reason
}

// Unwrap exposes the underlying errors to errors.Is and errors.As.
func (e *Error) Unwrap() []error { return e.errs }

// Func adapts a function to a Prober; handy in tests to simulate dead or
// slow devices.
type Func func(ctx context.Context, kind Kind, address string) error

// Probe calls f(ctx, kind, address).
func (f Func) Probe(ctx context.Context, kind Kind, address string) error {
	return f(ctx, kind, address)
}
