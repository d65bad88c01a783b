// Package testsignal lets a test wait for something a background service
// did, instead of polling for its effect. A Signal is inert (a nil check)
// until a test calls Init; services signal unconditionally.
package testsignal

import "time"

// T is the part of *testing.T that Wait uses (so that production code,
// which links this package, does not link package testing).
type T interface {
	Helper()
	Fatalf(format string, args ...any)
}

// buffer is how many signals wait unread before more are dropped: a test
// waits for a few, never for thousands.
const buffer = 64

// Signal carries values of V from a service to a test that asked for them.
type Signal[V any] struct {
	ch chan V
}

// Init makes the signal deliver; call it before the service starts.
func (s *Signal[V]) Init() { s.ch = make(chan V, buffer) }

// Signal delivers v if a test asked for signals (and the buffer has room);
// otherwise it does nothing, cheaply.
func (s *Signal[V]) Signal(v V) {
	if s.ch == nil {
		return
	}
	select {
	case s.ch <- v:
	default:
	}
}

// Wait returns the next value, failing the test after timeout.
func (s *Signal[V]) Wait(t T, what string, timeout time.Duration) V {
	t.Helper()
	if s.ch == nil {
		t.Fatalf("testsignal: waiting for %s on a signal never initialised", what)
	}
	select {
	case v := <-s.ch:
		return v
	case <-time.After(timeout):
		t.Fatalf("testsignal: no %s within %v", what, timeout)
	}
	var zero V
	return zero
}
