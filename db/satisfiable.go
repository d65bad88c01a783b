package db

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// satisfiableFor is how long a selector found satisfiable (some registered
// device fits it) is trusted without asking the database again. A waiting
// acquire checks once, after its first empty attempt; under contention
// every holder that releases and acquires again waits again, and the check
// was one more query per cycle. The cost of trusting it: a request whose
// last fitting device was deleted within this window waits out its wait
// instead of failing at once with 422.
const satisfiableFor = 5 * time.Second

// satisfiableCacheMax bounds the cache: selectors come from clients, and
// this must not grow without end. Past it the cache starts over.
const satisfiableCacheMax = 10_000

// satisfiableCache remembers when each selector was last found satisfiable.
type satisfiableCache struct {
	mu sync.Mutex
	at map[string]time.Time
}

// fresh reports whether sel was found satisfiable within satisfiableFor.
func (c *satisfiableCache) fresh(sel Selector, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.at[sel.Key()]
	return ok && now.Sub(at) < satisfiableFor
}

// remember records that sel was found satisfiable at now.
func (c *satisfiableCache) remember(sel Selector, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at == nil || len(c.at) >= satisfiableCacheMax {
		c.at = make(map[string]time.Time)
	}
	c.at[sel.Key()] = now
}

// checkSatisfiable fails with ErrUnsatisfiable when fewer than count
// registered devices could ever fit sel. A selector found satisfiable for
// one device recently is not asked about again (see satisfiableFor).
func (a *Allocator) checkSatisfiable(ctx context.Context, sel Selector, count int, bound time.Duration) error {
	if count <= 1 && a.satisfiable.fresh(sel, time.Now()) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	ok, err := a.q.SelectorCanMatch(ctx, dbsqlc.SelectorCanMatchParams{Pool: sel.Pool, Labels: sel.Labels.JSON(), Want: int32(max(count, 1))})
	if err != nil {
		return fmt.Errorf("check selector in pool %q: %w", sel.Pool, err)
	}
	if !ok {
		return ErrUnsatisfiable
	}
	a.satisfiable.remember(sel, time.Now())
	return nil
}
