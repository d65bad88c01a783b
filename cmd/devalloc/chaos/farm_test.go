//go:build chaos

package chaos

import (
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// farm is the harness's simulated devices: loopback listeners it owns and
// closes at the end of the scenario.
type farm struct {
	mu        sync.Mutex
	listeners []net.Listener
	servers   []*http.Server
	conns     []net.Conn // held open by hanging devices
	closed    bool
	wg        sync.WaitGroup
}

func (f *farm) listen() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.listeners = append(f.listeners, ln)
	f.mu.Unlock()
	return ln, nil
}

// tcpDevice accepts connections and closes them at once: all a tcp probe
// asks of a device.
func (f *farm) tcpDevice() (string, error) {
	ln, err := f.listen()
	if err != nil {
		return "", err
	}
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			c.Close()
		}
	})
	return ln.Addr().String(), nil
}

// hangDevice accepts connections and never answers on them: an http probe
// of it can only end by its deadline. accepted counts the probes.
func (f *farm) hangDevice(accepted *atomic.Int64) (string, error) {
	ln, err := f.listen()
	if err != nil {
		return "", err
	}
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			accepted.Add(1)
			f.mu.Lock()
			if f.closed {
				c.Close()
			} else {
				f.conns = append(f.conns, c)
			}
			f.mu.Unlock()
		}
	})
	return ln.Addr().String(), nil
}

// httpDevice answers GET with handler's status after delay. requests counts
// the probes.
func (f *farm) httpDevice(status func() int, delay time.Duration, requests *atomic.Int64, arrived chan<- struct{}) (string, error) {
	ln, err := f.listen()
	if err != nil {
		return "", err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if requests != nil {
				requests.Add(1)
			}
			if arrived != nil {
				select {
				case arrived <- struct{}{}:
				default:
				}
			}
			if delay > 0 {
				select {
				case <-time.After(delay):
				case <-r.Context().Done():
					return
				}
			}
			w.WriteHeader(status())
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	f.mu.Lock()
	f.servers = append(f.servers, srv)
	f.mu.Unlock()
	f.wg.Go(func() { _ = srv.Serve(ln) })
	return ln.Addr().String(), nil
}

// trapDevice tells arrived (without blocking) when a probe reaches it, and
// answers 200 after delay: the harness knows an acquire transaction holds
// the device's row lock right now.
func (f *farm) trapDevice(delay time.Duration, arrived chan<- struct{}) (string, error) {
	return f.httpDevice(func() int { return http.StatusOK }, delay, nil, arrived)
}

// slowDevice answers every probe with 200 after delay, so acquire
// transactions (which probe under the row lock) stay open that long.
func (f *farm) slowDevice(delay time.Duration) (string, error) {
	return f.httpDevice(func() int { return http.StatusOK }, delay, nil, nil)
}

// flapDevice answers 200 and 503 in turns of period each.
func (f *farm) flapDevice(period time.Duration, requests *atomic.Int64) (string, error) {
	start := time.Now()
	return f.httpDevice(func() int {
		if (time.Since(start)/period)%2 == 0 {
			return http.StatusOK
		}
		return http.StatusServiceUnavailable
	}, 0, requests, nil)
}

// close stops every device and waits for their goroutines.
func (f *farm) close() {
	f.mu.Lock()
	f.closed = true
	for _, ln := range f.listeners {
		ln.Close()
	}
	for _, s := range f.servers {
		s.Close()
	}
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}

func newCounter() *atomic.Int64 { return &atomic.Int64{} }
