package httpapi

import (
	"context"
	"fmt"
	"net/http"
)

// DefaultMaxClientPriority is Options.MaxClientPriority's default: enough
// for a client to put its urgent jobs ahead of its routine ones, not enough
// to jump a line that admins order with priorities up to 100.
const DefaultMaxClientPriority = 10

// clientPriorityCap turns Options.MaxClientPriority into the highest
// priority a client key may ask for: 0 means the default, a negative value
// none above 0.
func clientPriorityCap(n int) int {
	switch {
	case n == 0:
		return DefaultMaxClientPriority
	case n < 0:
		return 0
	default:
		return n
	}
}

// mayUsePriority fails with 403 when a client key asks for more priority
// than it may. The schema already bounds every key to -100..100; lower
// priorities are always allowed (a client may let others go first).
func (s *server) mayUsePriority(ctx context.Context, priority int) error {
	if p := principal(ctx); p.Admin || priority <= s.maxClientPriority {
		return nil
	}
	return problem(http.StatusForbidden, kindPriorityTooHigh, fmt.Sprintf(
		"priority %d is above %d, the most a client key may ask for; ask an admin key", priority, s.maxClientPriority))
}
