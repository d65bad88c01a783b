package db

import (
	"sync"
	"time"

	"github.com/google/uuid"
)

// reapRetryAfter is how long the reaper passes by a lease the database
// refused to end (a constraint, a trigger; not a timeout or a deadlock,
// which the next pass retries) before it tries again: long enough that a lease that fails every time
// costs one statement and one log line a minute per instance, not one per
// pass; short enough that a fixed row expires soon after.
const reapRetryAfter = time.Minute

// reapCooldown remembers the expired leases the reaper could not end,
// until when it leaves each alone. Safe for concurrent use (a test may
// reap while the background reaper runs).
type reapCooldown struct {
	mu    sync.Mutex
	until map[uuid.UUID]time.Time
}

// add leaves lease id alone until until.
func (c *reapCooldown) add(id uuid.UUID, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.until == nil {
		c.until = map[uuid.UUID]time.Time{}
	}
	c.until[id] = until
}

// skips reports whether lease id is still to be left alone at now.
func (c *reapCooldown) skips(id uuid.UUID, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.until[id]
	return ok && now.Before(until)
}

// forgetBefore drops the entries whose time is over, so the set holds only
// the failures of the last reapRetryAfter (a lease ended some other way
// does not stay in it).
func (c *reapCooldown) forgetBefore(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, until := range c.until {
		if !now.Before(until) {
			delete(c.until, id)
		}
	}
}
