package bench

import (
	"cmp"
	"slices"
	"sort"
	"time"
)

// The handoff clients log what they saw on one clock (all of them run in
// this process, on time.Since of one start), and the handoffs are found
// afterwards: per device, each release is followed by the next acquire
// that read that device.

// acquireEvent is an acquire that got device: its request was sent at
// sent and its 201 read at got.
type acquireEvent struct {
	device    string
	sent, got time.Duration
}

// releaseEvent is a release of device whose DELETE was sent at sent.
type releaseEvent struct {
	device string
	sent   time.Duration
}

// handoff is a device passing from a releasing client to a waiting one.
type handoff struct {
	device   string
	released time.Duration // the release was sent
	got      time.Duration // the waiter read its 201
}

func (h handoff) latency() time.Duration { return h.got - h.released }

// matchHandoffs pairs each release with the first acquire of the same
// device read after the release was sent. That acquire is a handoff only
// if it was sent before the release: its client was already waiting. An
// acquire sent later found the device idle, which measures the acquire,
// not the handoff. Each acquire serves at most one release. The result is
// ordered by release time.
func matchHandoffs(acqs []acquireEvent, rels []releaseEvent) []handoff {
	byDevice := map[string][]acquireEvent{}
	for _, a := range acqs {
		byDevice[a.device] = append(byDevice[a.device], a)
	}
	for _, list := range byDevice {
		slices.SortFunc(list, func(x, y acquireEvent) int { return cmp.Compare(x.got, y.got) })
	}
	rels = slices.Clone(rels)
	slices.SortFunc(rels, func(x, y releaseEvent) int { return cmp.Compare(x.sent, y.sent) })
	used := map[string]int{} // per device: acquires before this index are taken
	var out []handoff
	for _, r := range rels {
		list := byDevice[r.device]
		from := used[r.device]
		i := from + sort.Search(len(list)-from, func(k int) bool { return list[from+k].got > r.sent })
		if i == len(list) {
			continue // nobody got the device after this release (the run ended)
		}
		used[r.device] = i + 1
		if a := list[i]; a.sent < r.sent {
			out = append(out, handoff{device: r.device, released: r.sent, got: a.got})
		}
	}
	return out
}

// handoffsWithin keeps the handoffs whose release was sent in [from, to).
func handoffsWithin(hs []handoff, from, to time.Duration) []handoff {
	var out []handoff
	for _, h := range hs {
		if h.released >= from && h.released < to {
			out = append(out, h)
		}
	}
	return out
}
