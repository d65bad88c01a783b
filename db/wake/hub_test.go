package wake

import (
	"testing"

	"github.com/devalloc/devalloc/db/devalloctype"
)

func woken(w *Waiter) bool {
	select {
	case <-w.Wake():
		return true
	default:
		return false
	}
}

func labelled(pool string, kv ...string) IdleEvent {
	l := devalloctype.Labels{}
	for i := 0; i+1 < len(kv); i += 2 {
		l[kv[i]] = kv[i+1]
	}
	return IdleEvent{Pool: pool, Labels: l, LabelsKnown: true}
}

func TestHubWakesOldestMatchingWaiterOnce(t *testing.T) {
	h := NewHub()
	first := h.Join(devalloctype.Selector{Pool: "p"})
	second := h.Join(devalloctype.Selector{Pool: "p"})
	other := h.Join(devalloctype.Selector{Pool: "q"})
	defer first.Leave()
	defer second.Leave()
	defer other.Leave()

	if n := h.Notify(labelled("p")); n != 1 {
		t.Fatalf("one idle device woke %d waiters, want 1", n)
	}
	if !woken(first) || woken(second) || woken(other) {
		t.Fatal("the oldest waiter of the pool should be the only one woken")
	}
}

func TestHubSkipsWaitersWhoseSelectorDoesNotMatch(t *testing.T) {
	h := NewHub()
	wantsPixel := h.Join(devalloctype.Selector{Pool: "android", Labels: devalloctype.Labels{"model": "pixel"}})
	wantsAny := h.Join(devalloctype.Selector{Pool: "android"})
	defer wantsPixel.Leave()
	defer wantsAny.Leave()

	h.Notify(labelled("android", "model", "galaxy"))
	if woken(wantsPixel) {
		t.Fatal("a galaxy woke the waiter that wants a pixel")
	}
	if !woken(wantsAny) {
		t.Fatal("a galaxy did not wake the waiter that takes any device")
	}
}

func TestHubDoesNotWakeTheSameWaiterTwiceForTwoDevices(t *testing.T) {
	h := NewHub()
	a := h.Join(devalloctype.Selector{Pool: "p"})
	b := h.Join(devalloctype.Selector{Pool: "p"})
	defer a.Leave()
	defer b.Leave()

	h.Notify(labelled("p"))
	h.Notify(labelled("p"))
	if !woken(a) || !woken(b) {
		t.Fatal("two idle devices should wake two waiters")
	}
}

func TestHubPrefersAWaiterThatIsNotMidAttempt(t *testing.T) {
	h := NewHub()
	busy := h.Join(devalloctype.Selector{Pool: "p"})
	free := h.Join(devalloctype.Selector{Pool: "p"})
	defer busy.Leave()
	defer free.Leave()

	busy.BeginAttempt()
	h.Notify(labelled("p"))
	if woken(busy) || !woken(free) {
		t.Fatal("the event should go to the waiter that is not attempting")
	}
	busy.EndAttempt()
}

func TestHubWakesAttemptingWaiterWhenNoOtherMatches(t *testing.T) {
	h := NewHub()
	w := h.Join(devalloctype.Selector{Pool: "p"})
	defer w.Leave()

	w.BeginAttempt()
	h.Notify(labelled("p"))
	w.EndAttempt()
	if !woken(w) {
		t.Fatal("a device freed during the attempt must leave a wake-up pending")
	}
}

func TestHubLeavePassesAnUnusedWakeUpOn(t *testing.T) {
	h := NewHub()
	gone := h.Join(devalloctype.Selector{Pool: "p"})
	next := h.Join(devalloctype.Selector{Pool: "p"})
	defer next.Leave()

	h.Notify(labelled("p"))
	gone.Leave() // timed out without looking at its wake-up
	if !woken(next) {
		t.Fatal("the wake-up of a waiter that left must pass to the next")
	}
	if h.Waiting("p") != 1 {
		t.Fatalf("waiting = %d, want 1", h.Waiting("p"))
	}
}

func TestHubPoolOnlyEventWakesOnePerSelector(t *testing.T) {
	h := NewHub()
	a1 := h.Join(devalloctype.Selector{Pool: "p", Labels: devalloctype.Labels{"a": "1"}})
	a2 := h.Join(devalloctype.Selector{Pool: "p", Labels: devalloctype.Labels{"a": "1"}})
	b := h.Join(devalloctype.Selector{Pool: "p", Labels: devalloctype.Labels{"b": "1"}})
	defer a1.Leave()
	defer a2.Leave()
	defer b.Leave()

	if n := h.Notify(IdleEvent{Pool: "p"}); n != 2 {
		t.Fatalf("woke %d, want one per selector (2)", n)
	}
	if !woken(a1) || woken(a2) || !woken(b) {
		t.Fatal("want the oldest waiter of each selector woken")
	}
}

func TestHubForgetsEmptyPools(t *testing.T) {
	h := NewHub()
	w := h.Join(devalloctype.Selector{Pool: "p", Labels: devalloctype.Labels{"x": "y"}})
	w.Leave()
	w.Leave() // twice is harmless
	if len(h.WaitingSelectors()) != 0 {
		t.Fatalf("pools with waiters: %v, want none", h.WaitingSelectors())
	}
}

func TestParseIdlePayload(t *testing.T) {
	ev := ParseIdlePayload(`{"pool":"android","device":7,"labels":{"model":"pixel"}}`)
	if ev.Pool != "android" || !ev.LabelsKnown || ev.Labels["model"] != "pixel" {
		t.Fatalf("parsed %+v", ev)
	}
	ev = ParseIdlePayload(`{"pool":"android","device":7}`)
	if ev.Pool != "android" || ev.LabelsKnown {
		t.Fatalf("pool-only payload parsed as %+v", ev)
	}
}
