package db

import (
	"sync"
	"time"
)

// busyLineMemory is how long a pool's line counts as busy after this
// instance last saw it so. While it does, an acquire that may wait joins the
// line at once: trying for an idle device first costs a statement that
// the line would refuse anyway. When the line has emptied meanwhile, the
// request is served straight from the line (joining it finds the idle
// device and runs the dispatcher), a few statements more than the one
// statement grant, for at most this long.
const busyLineMemory = time.Second

// busyLines is the set of pools whose line was busy lately.
type busyLines struct {
	mu    sync.Mutex
	pools map[string]time.Time
}

// saw records whether pool's line was busy just now.
func (b *busyLines) saw(pool string, busy bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !busy {
		delete(b.pools, pool)
		return
	}
	if b.pools == nil {
		b.pools = map[string]time.Time{}
	}
	if len(b.pools) > satisfiableCacheMax {
		clear(b.pools) // client-chosen names: stay bounded
	}
	b.pools[pool] = time.Now()
}

// looksBusy reports whether pool's line was busy within busyLineMemory.
func (b *busyLines) looksBusy(pool string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	at, ok := b.pools[pool]
	return ok && time.Since(at) < busyLineMemory
}
