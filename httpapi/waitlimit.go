package httpapi

import (
	"net/http"
	"strconv"
	"sync"
)

// DefaultMaxWaitingPerKey is Options.MaxWaitingPerKey's default.
const DefaultMaxWaitingPerKey = 100

// waitLimiter caps the acquires with wait_seconds > 0 that one principal
// has in progress at this instance. A waiting acquire holds no database
// connection, but it does hold a goroutine, a socket and a place in the
// waiter hub; one runaway client (a retry loop without backoff) must not be
// able to pile up thousands of them and starve everyone else. The count is
// per instance: instances share nothing but the database.
type waitLimiter struct {
	max     int
	mu      sync.Mutex
	waiting map[string]int
}

func newWaitLimiter(max int) *waitLimiter {
	if max <= 0 {
		max = DefaultMaxWaitingPerKey
	}
	return &waitLimiter{max: max, waiting: map[string]int{}}
}

// enter takes one of name's places; ok is false when all are taken. The
// caller must call done once the acquire has ended.
func (l *waitLimiter) enter(name string) (done func(), ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.waiting[name] >= l.max {
		return nil, false
	}
	l.waiting[name]++
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.waiting[name]--; l.waiting[name] <= 0 {
			delete(l.waiting, name) // keep the map as small as the set of waiting keys
		}
	}, true
}

// tooManyWaiting is the 429 for a principal at its cap.
func (l *waitLimiter) tooManyWaiting() error {
	return retryLater(http.StatusTooManyRequests, kindTooManyWaiting,
		"this key already has "+strconv.Itoa(l.max)+" acquires waiting at this server; "+
			"wait for one to end before starting another", retryAfter())
}
