package wake

import (
	"testing"
	"time"
)

// The listener's reconnect backoff doubles while the database stays away,
// never past listenerRetryMax (the instance is unready meanwhile), and
// starts over after a connection that had come up: an instance that lived
// through one outage does not wait out a long backoff in the next.
func TestListenerRetryBackoff(t *testing.T) {
	var got []time.Duration
	b := time.Duration(0)
	for range 8 {
		b = nextListenerRetry(b, false)
		got = append(got, b)
	}
	want := []time.Duration{50, 100, 200, 400, 800, 1600, 2000, 2000}
	for i, w := range want {
		if got[i] != w*time.Millisecond {
			t.Fatalf("retry %d: %v, want %v (all: %v)", i+1, got[i], w*time.Millisecond, got)
		}
	}
	if b = nextListenerRetry(b, true); b != listenerRetryMin {
		t.Fatalf("after a connection that came up: %v, want %v", b, listenerRetryMin)
	}
}
