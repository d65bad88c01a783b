package bench

import (
	"errors"
	"fmt"
	"net"
	"sync"
)

// loopbackDevice is a TCP listener that stands in for a device whose tcp
// probe passes: it accepts and closes at once, which is all a probe does.
type loopbackDevice struct {
	ln   net.Listener
	done sync.WaitGroup
}

// startLoopbackDevice listens on a free loopback port.
func startLoopbackDevice() (*loopbackDevice, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("loopback device: %w", err)
	}
	d := &loopbackDevice{ln: ln}
	d.done.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				return // closed
			}
			c.Close()
		}
	})
	return d, nil
}

// Addr is host:port, the device's address for a tcp probe.
func (d *loopbackDevice) Addr() string { return d.ln.Addr().String() }

// Close stops listening and waits for the accept loop to end.
func (d *loopbackDevice) Close() {
	d.ln.Close()
	d.done.Wait()
}
