// Package history checks what devalloc's clients were told against a
// sequential model of one device's holders, with porcupine: a recorded
// history of acquires, renews and releases (with their call and return
// times) is linearizable only if, per device, there is an order of the
// operations, consistent with real time, in which every answer is one the
// model allows.
//
// The model is the allocator's promise, with time in it:
//   - an acquire's lease (a 201) may begin only when the device's previous
//     lease has ended: released by its holder, or past its expires_at by
//     the database clock at the moment the new lease was granted;
//   - fencing tokens grow with every new lease of a device;
//   - a renew's 200 means the lease was live when the renew was called and
//     is held until the expires_at it returned;
//   - a release's 200 means the lease was live (or already released by its
//     holder) when it was called;
//   - a 410 only comes after the lease ended (superseded, released, or past
//     its expires_at by the time of the answer);
//   - a fresh (not replayed) acquire never answers with an ended lease.
//
// Times are microseconds since the epoch. The database's times (acquired_at,
// expires_at) and the process's call and return times come from the same
// machine's clock, so they compare directly; Tolerance absorbs rounding.
//
// Operations whose outcome the client never learned (a connection cut, a
// crash of its instance) are modelled leniently: they may or may not have
// taken effect, so they never cause a violation on their own.
package history

import (
	"fmt"
	"hash/fnv"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

// Kind is what a client asked.
type Kind int

const (
	Acquire Kind = iota
	Renew
	Release
)

func (k Kind) String() string {
	return [...]string{"acquire", "renew", "release"}[k]
}

// Outcome is what the client was told.
type Outcome int

const (
	// OK: a 201 (acquire) or 200 (renew, release).
	OK Outcome = iota
	// Ended: a 410, the lease has ended.
	Ended
	// Unknown: an error that leaves the effect unknown (503 from a cut
	// connection, a crashed instance, an internal error).
	Unknown
)

func (o Outcome) String() string {
	return [...]string{"ok", "410", "unknown"}[o]
}

// Tolerance absorbs the rounding between the process's clock readings (ns)
// and PostgreSQL's (µs). It only ever makes the model more lenient.
const Tolerance = int64(time.Millisecond / time.Microsecond)

// UnknownSlack is added to the return time of an operation with an unknown
// outcome when bounding its effect: a statement the client gave up on may
// commit a moment after the client saw the error.
const UnknownSlack = int64(200 * time.Millisecond / time.Microsecond)

// LeaseInfo is what an answer said about one lease.
type LeaseInfo struct {
	ID         string
	Token      int64
	AcquiredAt int64 // µs, database clock
	ExpiresAt  int64 // µs, database clock
	// Ended: the answer carried released_at.
	Ended bool
}

// Input is one call, for one device.
type Input struct {
	Kind   Kind
	Client int
	Device string
	// Lease is the lease renewed or released (empty for acquires).
	Lease string
	// TTL of a renew, µs (bounds the effect of a renew with unknown outcome).
	TTL int64
	// Call and Return repeat the operation's times, in µs, for Step.
	Call, Return int64
	// Note says more for people reading a violation (key, instance, ...).
	Note string
}

// Output is one answer.
type Output struct {
	Outcome Outcome
	// Lease is the lease answered with (acquire: the one for this device;
	// renew: the renewed lease with its new expires_at).
	Lease LeaseInfo
	// Replayed: the acquire's answer replayed an earlier request's lease
	// (Idempotency-Key).
	Replayed bool
	// Err is the error text for Unknown and Ended answers.
	Err string
}

// pastSlots bounds how many ended leases a device's state remembers as
// released by their holders (for an idempotent re-release).
const pastSlots = 4

// State is one device's holders as the model sees them: the latest lease
// granted, and the latest leases released by their holders. Comparable, so
// porcupine's == works.
type State struct {
	Cur LeaseState
	// Released ring of lease ids released (or maybe released) by their
	// holders before a newer lease was granted.
	Released [pastSlots]string
	next     int
}

// LeaseState is the model's knowledge of the current lease.
type LeaseState struct {
	ID         string
	Token      int64
	AcquiredAt int64
	// ExpLo: surely held until (as far as the client knows); ExpHi: maybe
	// held until (a renew with unknown outcome may have extended it).
	ExpLo, ExpHi int64
	// Released: its holder's release was answered 200.
	Released bool
	// MaybeReleased: a release with unknown outcome was sent.
	MaybeReleased bool
}

func (s State) wasReleased(id string) bool {
	for _, r := range s.Released {
		if r != "" && r == id {
			return true
		}
	}
	return false
}

// Step applies one operation to a device's state; false means the answer is
// impossible in this order. Exposed (with the reason) for tests and for the
// violation report.
func Step(s State, in Input, out Output) (bool, State, string) {
	switch in.Kind {
	case Acquire:
		return stepAcquire(s, in, out)
	case Renew:
		return stepRenew(s, in, out)
	case Release:
		return stepRelease(s, in, out)
	}
	return false, s, "unknown operation"
}

func stepAcquire(s State, in Input, out Output) (bool, State, string) {
	if out.Outcome != OK {
		return true, s, "" // no lease told: nothing to check
	}
	l := out.Lease
	if l.Ended {
		if !out.Replayed {
			return false, s, fmt.Sprintf("a fresh acquire answered with lease %s, which had already ended", short(l.ID))
		}
		return true, s, "" // a replay of an ended lease: the client holds nothing
	}
	if l.ID == s.Cur.ID {
		if s.Cur.Released {
			return false, s, fmt.Sprintf("lease %s answered as active after its release", short(l.ID))
		}
		return true, s, "" // a replay of the current lease
	}
	if s.wasReleased(l.ID) {
		return false, s, fmt.Sprintf("lease %s answered as active after a newer lease replaced it", short(l.ID))
	}
	if c := s.Cur; c.ID != "" {
		if l.AcquiredAt < c.AcquiredAt {
			return false, s, fmt.Sprintf("lease %s (acquired %s) is active, but %s was granted after it (%s)",
				short(l.ID), ts(l.AcquiredAt), short(c.ID), ts(c.AcquiredAt))
		}
		ended := c.Released || c.MaybeReleased || c.ExpLo <= l.AcquiredAt
		if !ended {
			return false, s, fmt.Sprintf("lease %s granted at %s while lease %s was held until %s (%s later) and not released",
				short(l.ID), ts(l.AcquiredAt), short(c.ID), ts(c.ExpLo), time.Duration(c.ExpLo-l.AcquiredAt)*time.Microsecond)
		}
		if l.Token <= c.Token {
			return false, s, fmt.Sprintf("fencing token went from %d (lease %s) to %d (lease %s)", c.Token, short(c.ID), l.Token, short(l.ID))
		}
		if c.Released || c.MaybeReleased {
			s.Released[s.next] = c.ID
			s.next = (s.next + 1) % pastSlots
		}
	}
	s.Cur = LeaseState{ID: l.ID, Token: l.Token, AcquiredAt: l.AcquiredAt, ExpLo: l.ExpiresAt, ExpHi: l.ExpiresAt}
	return true, s, ""
}

func stepRenew(s State, in Input, out Output) (bool, State, string) {
	current := in.Lease == s.Cur.ID
	switch out.Outcome {
	case OK:
		if !current {
			return false, s, fmt.Sprintf("renew of lease %s answered 200, but a newer lease had replaced it", short(in.Lease))
		}
		if s.Cur.Released {
			return false, s, fmt.Sprintf("renew of lease %s answered 200 after its release", short(in.Lease))
		}
		if in.Call > s.Cur.ExpHi+Tolerance {
			return false, s, fmt.Sprintf("renew of lease %s called at %s answered 200, but the lease had expired at %s",
				short(in.Lease), ts(in.Call), ts(s.Cur.ExpHi))
		}
		s.Cur.ExpLo, s.Cur.ExpHi = out.Lease.ExpiresAt, out.Lease.ExpiresAt
		return true, s, ""
	case Ended:
		if !current || s.Cur.MaybeReleased || s.Cur.ExpLo <= in.Return+Tolerance {
			return true, s, ""
		}
		return false, s, fmt.Sprintf("renew of lease %s answered 410 at %s, but the lease was held until %s (%s later)",
			short(in.Lease), ts(in.Return), ts(s.Cur.ExpLo), time.Duration(s.Cur.ExpLo-in.Return)*time.Microsecond)
	default:
		if current {
			s.Cur.ExpHi = max(s.Cur.ExpHi, in.Return+UnknownSlack+in.TTL)
		}
		return true, s, ""
	}
}

func stepRelease(s State, in Input, out Output) (bool, State, string) {
	current := in.Lease == s.Cur.ID
	switch out.Outcome {
	case OK:
		if current {
			c := s.Cur
			if !c.Released && !c.MaybeReleased && in.Call > c.ExpHi+Tolerance {
				return false, s, fmt.Sprintf("release of lease %s called at %s answered 200, but the lease had expired at %s",
					short(in.Lease), ts(in.Call), ts(c.ExpHi))
			}
			s.Cur.Released = true
			return true, s, ""
		}
		if s.wasReleased(in.Lease) {
			return true, s, "" // released again: idempotent
		}
		return false, s, fmt.Sprintf("release of lease %s answered 200, but a newer lease had replaced it without its release", short(in.Lease))
	case Ended:
		if !current || s.Cur.MaybeReleased || s.Cur.ExpLo <= in.Return+Tolerance {
			return true, s, ""
		}
		return false, s, fmt.Sprintf("release of lease %s answered 410 at %s, but the lease was held until %s (%s later)",
			short(in.Lease), ts(in.Return), ts(s.Cur.ExpLo), time.Duration(s.Cur.ExpLo-in.Return)*time.Microsecond)
	default:
		if current {
			s.Cur.MaybeReleased = true
		}
		return true, s, ""
	}
}

// Model is the porcupine model, partitioned by device.
func Model() porcupine.Model {
	return porcupine.Model{
		Partition: partitionByDevice,
		Init:      func() any { return State{} },
		Step: func(state, input, output any) (bool, any) {
			ok, next, _ := Step(state.(State), input.(Input), output.(Output))
			return ok, next
		},
		Equal: func(a, b any) bool { return a.(State) == b.(State) },
		Hash: func(state any) uint64 {
			s := state.(State)
			h := fnv.New64a()
			fmt.Fprintf(h, "%v", s)
			return h.Sum64()
		},
		DescribeOperation: func(input, output any) string { return Describe(input.(Input), output.(Output)) },
		DescribeState: func(state any) string {
			c := state.(State).Cur
			if c.ID == "" {
				return "free"
			}
			return fmt.Sprintf("%s token %d until %s released=%v/%v", short(c.ID), c.Token, ts(c.ExpLo), c.Released, c.MaybeReleased)
		},
	}
}

func partitionByDevice(ops []porcupine.Operation) [][]porcupine.Operation {
	by := map[string][]porcupine.Operation{}
	for _, op := range ops {
		d := op.Input.(Input).Device
		by[d] = append(by[d], op)
	}
	names := make([]string, 0, len(by))
	for n := range by {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([][]porcupine.Operation, 0, len(names))
	for _, n := range names {
		out = append(out, by[n])
	}
	return out
}

// Describe renders one operation for reports and the visualization.
func Describe(in Input, out Output) string {
	s := fmt.Sprintf("c%d %s %s", in.Client, in.Kind, in.Device)
	if in.Lease != "" {
		s += " lease " + short(in.Lease)
	}
	if in.Note != "" {
		s += " [" + in.Note + "]"
	}
	s += " -> " + out.Outcome.String()
	if out.Outcome == OK && out.Lease.ID != "" {
		s += fmt.Sprintf(" lease %s token %d acquired %s expires %s", short(out.Lease.ID), out.Lease.Token, ts(out.Lease.AcquiredAt), ts(out.Lease.ExpiresAt))
		if out.Lease.Ended {
			s += " ENDED"
		}
		if out.Replayed {
			s += " (replayed)"
		}
	}
	if out.Err != "" {
		s += " (" + out.Err + ")"
	}
	return s
}

func short(id string) string {
	if len(id) > 8 {
		return id[len(id)-8:]
	}
	return id
}

// ts renders a µs time as clock time with milliseconds.
func ts(us int64) string {
	return time.UnixMicro(us).UTC().Format("15:04:05.000000")
}
