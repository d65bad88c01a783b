package rawsql

import (
	"sync"
	"time"

	"github.com/devalloc/devalloc/cmd/devalloc/bench"
)

// tracker matches notifications to the releases they cover and measures
// delivery: from the moment a release's COMMIT returned at the releasing
// client to the moment the listener received the notification that covers
// it. The start is the same in every mode, so after-commit's extra round
// trip and coalesced's wait for a batch count against them, as they would
// against a waiting client.
//
// A payload (a key) covers one release or, coalesced, a batch of them.
type tracker struct {
	mu sync.Mutex
	// waiting maps a registered key to the commit times of the releases
	// it covers, until its notification arrives.
	waiting map[string][]time.Time
	// early holds the receive times of notifications that arrived before
	// their key was registered: in-transaction, the server may wake the
	// listener before the committing client has read its COMMIT's reply.
	// Such a delivery counts as 0.
	early    map[string]time.Time
	delivery []time.Duration
	releases int
	overtook int // releases whose notification was in early
	notices  int // notifications that covered releases
	strays   int // notifications received twice
	sealed   bool
	done     chan struct{} // closed once sealed with nothing waiting
}

func newTracker() *tracker {
	return &tracker{
		waiting: make(map[string][]time.Time),
		early:   make(map[string]time.Time),
		done:    make(chan struct{}),
	}
}

// register says that the notification with payload key covers releases
// whose COMMITs returned at commits.
func (t *tracker) register(key string, commits ...time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.releases += len(commits)
	if at, ok := t.early[key]; ok {
		delete(t.early, key)
		t.overtook += len(commits)
		t.notices++
		t.deliver(commits, at)
		return
	}
	t.waiting[key] = append(t.waiting[key], commits...)
}

// receive records that the listener received payload key at at.
func (t *tracker) receive(key string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	commits, ok := t.waiting[key]
	if !ok {
		if _, dup := t.early[key]; dup {
			t.strays++
			return
		}
		t.early[key] = at
		return
	}
	delete(t.waiting, key)
	t.notices++
	t.deliver(commits, at)
	t.closeIfDone()
}

// deliver records one delivery per release; t.mu is held.
func (t *tracker) deliver(commits []time.Time, at time.Time) {
	for _, c := range commits {
		t.delivery = append(t.delivery, max(at.Sub(c), 0))
	}
}

// seal says no more releases will be registered: from then on done is
// closed as soon as every registered release has been delivered.
func (t *tracker) seal() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sealed = true
	t.closeIfDone()
}

// closeIfDone closes done once sealed with nothing waiting; t.mu is held.
func (t *tracker) closeIfDone() {
	if t.sealed && len(t.waiting) == 0 {
		select {
		case <-t.done:
		default:
			close(t.done)
		}
	}
}

// allDelivered is closed once sealed and every release was delivered.
func (t *tracker) allDelivered() <-chan struct{} { return t.done }

// trackerReport is what a tracker saw.
type trackerReport struct {
	delivery bench.Latency // one sample per delivered release
	releases int           // releases registered
	missing  int           // releases whose notification never came
	overtook int           // releases whose notification beat their COMMIT's reply
	notices  int           // notifications that covered releases
	strays   int           // notifications that covered no release, or came twice
}

func (t *tracker) report() trackerReport {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := trackerReport{releases: t.releases, overtook: t.overtook, notices: t.notices, strays: t.strays + len(t.early)}
	for _, commits := range t.waiting {
		r.missing += len(commits)
	}
	r.delivery = bench.Summarize(append([]time.Duration(nil), t.delivery...))
	return r
}
