package history

import (
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

const ms = int64(time.Millisecond / time.Microsecond)

// h builds histories by hand: times in ms from an arbitrary origin.
type h struct{ ops []porcupine.Operation }

func (b *h) add(kind Kind, client int, lease string, call, ret int64, out Output) {
	in := Input{Kind: kind, Client: client, Device: "d", Lease: lease, TTL: 1000 * ms, Call: call * ms, Return: ret * ms}
	b.ops = append(b.ops, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: in.Call, Return: in.Return})
}

func granted(id string, token, acq, exp int64) Output {
	return Output{Outcome: OK, Lease: LeaseInfo{ID: id, Token: token, AcquiredAt: acq * ms, ExpiresAt: exp * ms}}
}

func renewed(exp int64) Output { return Output{Outcome: OK, Lease: LeaseInfo{ExpiresAt: exp * ms}} }

var (
	ok    = Output{Outcome: OK}
	gone  = Output{Outcome: Ended}
	maybe = Output{Outcome: Unknown}
)

func check(t *testing.T, b *h, want porcupine.CheckResult) {
	t.Helper()
	res := Check(b.ops, 10*time.Second)
	if res.Verdict != want {
		t.Fatalf("verdict %s, want %s; %v", res.Verdict, want, res.Violations)
	}
	if want == porcupine.Illegal && len(res.Violations) == 0 {
		t.Fatal("illegal without an explanation")
	}
}

// The legal life of a device: grant, renew, release, a handoff concurrent
// with the release, expiry and a grant after it, a 410 after expiry.
func TestModelAcceptsLegalHistories(t *testing.T) {
	b := &h{}
	b.add(Acquire, 0, "", 0, 10, granted("A", 1, 5, 1005))
	b.add(Renew, 0, "A", 900, 910, renewed(2005))
	b.add(Acquire, 1, "", 1000, 2000, granted("B", 2, 1950, 2950)) // waited; handed A's device on release
	b.add(Release, 0, "A", 1940, 1960, ok)
	b.add(Renew, 1, "B", 2960, 2970, gone) // late: expired
	b.add(Acquire, 2, "", 2990, 3000, granted("C", 3, 2995, 3995))
	b.add(Release, 1, "B", 3010, 3020, gone)
	check(t, b, porcupine.Ok)
}

// A renew that started before expiry but was held up (a lock) may answer
// 200 later than the old expires_at.
func TestModelAcceptsARenewHeldUpAcrossExpiry(t *testing.T) {
	b := &h{}
	b.add(Acquire, 0, "", 0, 10, granted("A", 1, 5, 1005))
	b.add(Renew, 0, "A", 1000, 1400, renewed(2390))
	b.add(Release, 0, "A", 1500, 1510, ok)
	check(t, b, porcupine.Ok)
}

// Defect 1 of issue 12: a renew answered 200, then the reaper ended the
// lease as expired and handed the device over.
func TestModelRejectsARenewedLeaseHandedOver(t *testing.T) {
	b := &h{}
	b.add(Acquire, 0, "", 0, 10, granted("A", 1, 5, 1005))
	b.add(Renew, 0, "A", 990, 1030, renewed(2020))
	b.add(Acquire, 1, "", 500, 1050, granted("B", 2, 1040, 2040))
	check(t, b, porcupine.Illegal)
}

// The same defect seen by the holder alone: its next call is a 410 before
// the expires_at its renew was told.
func TestModelRejectsA410BeforeTheRenewedExpiry(t *testing.T) {
	b := &h{}
	b.add(Acquire, 0, "", 0, 10, granted("A", 1, 5, 1005))
	b.add(Renew, 0, "A", 990, 1030, renewed(2020))
	b.add(Release, 0, "A", 1100, 1110, gone)
	check(t, b, porcupine.Illegal)
}

// Defect 2: a fresh acquire answered with an ended lease.
func TestModelRejectsAFreshAcquireOfAnEndedLease(t *testing.T) {
	b := &h{}
	out := granted("A", 1, 5, 1005)
	out.Lease.Ended = true
	b.add(Acquire, 0, "", 0, 10, out)
	check(t, b, porcupine.Illegal)
	// A replay of it is fine: the client learns it holds nothing.
	b = &h{}
	out.Replayed = true
	b.add(Acquire, 0, "", 0, 10, out)
	check(t, b, porcupine.Ok)
}

func TestModelRejectsTwoHoldersAndFallingTokens(t *testing.T) {
	b := &h{}
	b.add(Acquire, 0, "", 0, 10, granted("A", 1, 5, 1005))
	b.add(Acquire, 1, "", 20, 30, granted("B", 2, 25, 1025))
	check(t, b, porcupine.Illegal)
	b = &h{}
	b.add(Acquire, 0, "", 0, 10, granted("A", 2, 5, 1005))
	b.add(Release, 0, "A", 20, 30, ok)
	b.add(Acquire, 1, "", 40, 50, granted("B", 2, 45, 1045))
	check(t, b, porcupine.Illegal)
}

// Calls whose outcome is unknown may or may not have happened; neither
// reading makes a violation.
func TestModelIsLenientWithUnknownOutcomes(t *testing.T) {
	b := &h{}
	b.add(Acquire, 0, "", 0, 10, granted("A", 1, 5, 1005))
	b.add(Release, 0, "A", 100, 110, maybe)
	b.add(Acquire, 1, "", 120, 130, granted("B", 2, 125, 1125)) // the release did happen
	check(t, b, porcupine.Ok)
	b = &h{}
	b.add(Acquire, 0, "", 0, 10, granted("A", 1, 5, 1005))
	b.add(Renew, 0, "A", 900, 950, maybe)
	b.add(Renew, 0, "A", 1500, 1510, renewed(2505)) // the first renew did happen
	check(t, b, porcupine.Ok)
	b = &h{}
	b.add(Acquire, 0, "", 0, 10, granted("A", 1, 5, 1005))
	b.add(Renew, 0, "A", 900, 950, maybe)
	b.add(Acquire, 1, "", 1010, 1020, granted("B", 2, 1015, 2015)) // it did not
	check(t, b, porcupine.Ok)
}
