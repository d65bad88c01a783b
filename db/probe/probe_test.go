package probe

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// All tests use loopback only and short timeouts; testBound is how long any
// single probe may take before a test calls it stuck.
const testBound = 2 * time.Second

// listen returns a loopback listener that the test closes on cleanup.
func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// acceptAndClose accepts and closes connections until ln is closed; cleanup
// waits for the goroutine so it cannot leak.
func acceptAndClose(t *testing.T, ln net.Listener) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	})
	// Registered after listen's cleanup, so it runs first: close, then wait.
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

// newServer starts a loopback HTTP server closed on cleanup.
func newServer(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// hangingServer starts a server whose handler blocks until the client goes
// away or the test ends. entered receives once per request that reached the
// handler. Cleanup releases blocked handlers before closing the server,
// because httptest.Server.Close waits for them.
func hangingServer(t *testing.T) (srv *httptest.Server, entered <-chan struct{}) {
	t.Helper()
	in := make(chan struct{}, 16)
	release := make(chan struct{})
	srv = newServer(t, func(w http.ResponseWriter, r *http.Request) {
		in <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) }) // runs before srv.Close
	return srv, in
}

// probeTimed runs one probe and fails the test if it exceeds testBound.
func probeTimed(t *testing.T, ctx context.Context, p Prober, kind Kind, addr string) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	err := p.Probe(ctx, kind, addr)
	d := time.Since(start)
	if d > testBound {
		t.Fatalf("probe %s %s took %v, want < %v", kind, addr, d, testBound)
	}
	return d, err
}

func TestKindValid(t *testing.T) {
	for _, k := range []Kind{TCP, HTTP, None} {
		if !k.Valid() {
			t.Errorf("%q.Valid() = false, want true", k)
		}
	}
	for _, k := range []Kind{"", "TCP", "udp", "https", "ping"} {
		if k.Valid() {
			t.Errorf("%q.Valid() = true, want false", k)
		}
	}
}

func TestDefaultTimeout(t *testing.T) {
	for _, n := range []*Network{nil, {}, {Timeout: -time.Second}} {
		if got := n.timeout(); got != DefaultTimeout {
			t.Errorf("timeout() = %v, want %v", got, DefaultTimeout)
		}
	}
	if got := (&Network{Timeout: time.Second}).timeout(); got != time.Second {
		t.Errorf("timeout() = %v, want 1s", got)
	}
	if DefaultTimeout != 2*time.Second {
		t.Errorf("DefaultTimeout = %v, want 2s", DefaultTimeout)
	}
}

func TestNoneAlwaysSucceeds(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	// No I/O at all: not even a cancelled context or a nonsense address
	// make it fail.
	for _, ctx := range []context.Context{t.Context(), ctx} {
		if err := (&Network{}).Probe(ctx, None, "not an address"); err != nil {
			t.Errorf("none probe: %v", err)
		}
	}
}

func TestUnknownKind(t *testing.T) {
	err := (&Network{}).Probe(t.Context(), "ping", "127.0.0.1:1")
	if err == nil || err.Error() != `unknown probe kind "ping"` {
		t.Fatalf("err = %v, want unknown probe kind \"ping\"", err)
	}
}

func TestFunc(t *testing.T) {
	dead := errors.New("dead")
	var gotKind Kind
	var gotAddr string
	var p Prober = Func(func(_ context.Context, k Kind, a string) error {
		gotKind, gotAddr = k, a
		return dead
	})
	if err := p.Probe(t.Context(), TCP, "dev:1"); !errors.Is(err, dead) {
		t.Errorf("err = %v, want %v", err, dead)
	}
	if gotKind != TCP || gotAddr != "dev:1" {
		t.Errorf("Func got (%q, %q), want (tcp, dev:1)", gotKind, gotAddr)
	}
}

func TestTCPSuccess(t *testing.T) {
	ln := listen(t)
	acceptAndClose(t, ln)
	if _, err := probeTimed(t, t.Context(), &Network{Timeout: time.Second}, TCP, ln.Addr().String()); err != nil {
		t.Fatalf("tcp probe: %v", err)
	}
}

// A listener that never calls Accept still completes the handshake: the
// kernel queues the connection in the listen backlog. So a tcp probe only
// proves that something listens on the port. This test documents that.
func TestTCPListenerNeverAccepts(t *testing.T) {
	ln := listen(t)
	if _, err := probeTimed(t, t.Context(), &Network{Timeout: time.Second}, TCP, ln.Addr().String()); err != nil {
		t.Fatalf("tcp probe to a non-accepting listener: %v (want success via backlog)", err)
	}
}

func TestTCPRefused(t *testing.T) {
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close() // nothing listens on addr any more

	_, err := probeTimed(t, t.Context(), &Network{Timeout: time.Second}, TCP, addr)
	if err == nil {
		t.Fatal("tcp probe to a closed port succeeded")
	}
	if want := "tcp " + addr + ": connection refused"; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	var nerr *net.OpError
	if !errors.As(err, &nerr) {
		t.Errorf("err does not wrap *net.OpError: %#v", err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("refused connection looks like a context error: %v", err)
	}
}

func TestTCPBadAddress(t *testing.T) {
	_, err := probeTimed(t, t.Context(), &Network{Timeout: time.Second}, TCP, "127.0.0.1")
	if err == nil || !strings.HasPrefix(err.Error(), "tcp 127.0.0.1: ") || !strings.Contains(err.Error(), "missing port in address") {
		t.Fatalf("err = %v, want tcp 127.0.0.1: ...missing port...", err)
	}
}

func TestTCPCallerAlreadyCancelled(t *testing.T) {
	ln := listen(t)
	acceptAndClose(t, ln)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := probeTimed(t, ctx, &Network{}, TCP, ln.Addr().String())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want errors.Is(err, context.Canceled)", err)
	}
}

func TestHTTPSuccess(t *testing.T) {
	// Socket I/O is invisible to the race detector, so handler results
	// travel over a channel.
	got := make(chan [2]string, 1)
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		got <- [2]string{r.UserAgent(), r.URL.Path}
		w.Write([]byte("ok"))
	})
	if _, err := probeTimed(t, t.Context(), &Network{Timeout: time.Second}, HTTP, srv.URL+"/health"); err != nil {
		t.Fatalf("http probe: %v", err)
	}
	seen := <-got
	gotUA, gotPath := seen[0], seen[1]
	if gotUA != "devalloc-probe" {
		t.Errorf("User-Agent = %q, want devalloc-probe", gotUA)
	}
	if gotPath != "/health" {
		t.Errorf("path = %q, want /health", gotPath)
	}
}

func TestHTTPWithoutScheme(t *testing.T) {
	paths := make(chan string, 2)
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		paths <- r.URL.Path
	})
	hostport := srv.Listener.Addr().String()
	for _, addr := range []string{hostport, hostport + "/status"} {
		if _, err := probeTimed(t, t.Context(), &Network{Timeout: time.Second}, HTTP, addr); err != nil {
			t.Errorf("http probe %s: %v", addr, err)
		}
	}
	close(paths)
	var got []string
	for p := range paths {
		got = append(got, p)
	}
	if strings.Join(got, " ") != "/ /status" {
		t.Errorf("paths = %q, want [/ /status]", got)
	}
}

func TestHTTPStatusFailure(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "warming up", http.StatusServiceUnavailable)
	})
	addr := srv.URL + "/health"
	_, err := probeTimed(t, t.Context(), &Network{Timeout: time.Second}, HTTP, addr)
	if want := "http " + addr + ": status 503"; err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
}

// Redirects are not followed: a 3xx is reported as the device's answer.
func TestHTTPRedirectNotFollowed(t *testing.T) {
	var followed atomic.Bool
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" {
			followed.Store(true)
			return
		}
		http.Redirect(w, r, "/login", http.StatusFound)
	})
	_, err := probeTimed(t, t.Context(), &Network{Timeout: time.Second}, HTTP, srv.URL)
	if want := "http " + srv.URL + ": status 302"; err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
	if followed.Load() {
		t.Error("probe followed the redirect")
	}
}

// A large body must not be read in full: only the status matters.
func TestHTTPLargeBody(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 64<<10)
		for range 1 << 10 { // 64 MiB, far more than a probe should read
			if _, err := w.Write(chunk); err != nil {
				return // the probe hung up, as it should
			}
		}
	})
	if _, err := probeTimed(t, t.Context(), &Network{Timeout: time.Second}, HTTP, srv.URL); err != nil {
		t.Fatalf("http probe: %v", err)
	}
}

func TestHTTPConnectionClosedWithoutResponse(t *testing.T) {
	ln := listen(t)
	acceptAndClose(t, ln)
	addr := ln.Addr().String()
	_, err := probeTimed(t, t.Context(), &Network{Timeout: time.Second}, HTTP, addr)
	if err == nil || !strings.HasPrefix(err.Error(), "http "+addr+": ") {
		t.Fatalf("err = %v, want http %s: ...", err, addr)
	}
}

func TestHTTPBadAddress(t *testing.T) {
	for _, addr := range []string{"ftp://127.0.0.1/x", "http://", "127.0.0.1:80/%zz"} {
		_, err := probeTimed(t, t.Context(), &Network{Timeout: time.Second}, HTTP, addr)
		if err == nil || !strings.HasPrefix(err.Error(), "http "+addr+": ") {
			t.Errorf("probe %q: err = %v, want http %s: ...", addr, err, addr)
		}
	}
}

// A device that accepts the connection but never answers fails within the
// probe timeout, as a device failure rather than a cancellation.
func TestHTTPNoAnswerTimesOut(t *testing.T) {
	srv, _ := hangingServer(t)
	n := &Network{Timeout: 200 * time.Millisecond}
	d, err := probeTimed(t, t.Context(), n, HTTP, srv.URL)
	if err == nil {
		t.Fatal("probe of a hanging server succeeded")
	}
	if d < n.Timeout {
		t.Errorf("probe returned after %v, before its %v timeout", d, n.Timeout)
	}
	if want := "http " + srv.URL + ": no answer within 200ms"; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	if errors.Is(err, context.Canceled) {
		t.Errorf("probe timeout satisfies errors.Is(err, context.Canceled): %v", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("probe timeout does not wrap context.DeadlineExceeded: %v", err)
	}
}

// When the caller's own deadline is shorter than the probe timeout, it wins
// and is reported as the caller's (wrapping ctx.Err()), not as the device's
// "no answer within".
func TestHTTPCallerDeadline(t *testing.T) {
	srv, _ := hangingServer(t)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := probeTimed(t, ctx, &Network{Timeout: 10 * time.Second}, HTTP, srv.URL)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want the caller's context.DeadlineExceeded", err)
	}
	if strings.Contains(err.Error(), "no answer within") {
		t.Errorf("caller deadline reported as a probe timeout: %v", err)
	}
}

// The client going away mid-probe is reported as context.Canceled so the
// allocator does not take a healthy device offline.
func TestHTTPCallerCancelledMidProbe(t *testing.T) {
	srv, entered := hangingServer(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		select {
		case <-entered: // the request is in flight
		case <-time.After(testBound):
		}
		cancel()
	}()
	_, err := probeTimed(t, ctx, &Network{Timeout: 10 * time.Second}, HTTP, srv.URL)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want errors.Is(err, context.Canceled)", err)
	}
	if want := "http " + srv.URL + ": probe cancelled"; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
}

// Default is usable as is.
func TestDefault(t *testing.T) {
	if err := Default.Probe(t.Context(), None, ""); err != nil {
		t.Fatal(err)
	}
	if _, ok := Default.(*Network); !ok {
		t.Fatalf("Default is %T, want *Network", Default)
	}
}
