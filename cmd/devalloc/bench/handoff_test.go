package bench

import (
	"slices"
	"testing"
	"time"
)

func TestMatchHandoffs(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	acqs := []acquireEvent{
		{device: "a", sent: ms(0), got: ms(1)},   // first use: no release before it
		{device: "b", sent: ms(0), got: ms(2)},   // first use
		{device: "a", sent: ms(5), got: ms(13)},  // waited since 5; a released at 10: handoff of 3 ms
		{device: "b", sent: ms(30), got: ms(31)}, // b released at 20, asked for at 30: idle, not a handoff
		{device: "a", sent: ms(12), got: ms(24)}, // a released at 20: handoff of 4 ms
		{device: "a", sent: ms(40), got: ms(45)}, // after the last release of a, and sent before none
	}
	rels := []releaseEvent{
		{device: "a", sent: ms(20)}, // out of order on purpose
		{device: "a", sent: ms(10)},
		{device: "b", sent: ms(20)},
		{device: "b", sent: ms(50)}, // nobody got b afterwards
	}
	got := matchHandoffs(acqs, rels)
	want := []handoff{
		{device: "a", released: ms(10), got: ms(13)},
		{device: "a", released: ms(20), got: ms(24)},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("handoffs %+v, want %+v", got, want)
	}
	if got[0].latency() != ms(3) || got[1].latency() != ms(4) {
		t.Errorf("latencies %v, %v", got[0].latency(), got[1].latency())
	}
	if w := handoffsWithin(got, ms(10), ms(20)); len(w) != 1 || w[0].released != ms(10) {
		t.Errorf("window [10, 20): %+v", w)
	}
}

func TestMatchHandoffsUsesEachAcquireOnce(t *testing.T) {
	// Two releases of "a" before anyone got it again (one release was of a
	// lease that had ended, say): only the first is paired.
	acqs := []acquireEvent{{device: "a", sent: 0, got: 50}}
	rels := []releaseEvent{{device: "a", sent: 10}, {device: "a", sent: 20}}
	got := matchHandoffs(acqs, rels)
	if len(got) != 1 || got[0].released != 10 {
		t.Fatalf("handoffs %+v", got)
	}
}

func TestHandoff(t *testing.T) {
	in, db := startAPI(t)
	res, err := Handoff(t.Context(), HandoffOptions{
		Instances: in, DB: db, Waiters: 10, Devices: 2, Hold: 20 * time.Millisecond,
		WaitSeconds: 10, Duration: time.Second, Warmup: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 {
		t.Errorf("errors: %d", res.Errors)
	}
	// Two devices held 20 ms each pass hands up to ~100 times a second.
	if res.Handoffs < 10 || res.Handoff.N != res.Handoffs {
		t.Errorf("handoffs: %d (latency over %d)", res.Handoffs, res.Handoff.N)
	}
	checkLatency(t, "handoff", res.Handoff)
	if res.Seconds < 0.9 || res.Seconds > 1.5 {
		t.Errorf("window of %vs, want about 1", res.Seconds)
	}
	// The commit count lags (statistics are published about once a
	// second), so only its sign is certain in a one-second window.
	if res.CommitsPerHandoff < 0 {
		t.Errorf("commits per handoff: %v", res.CommitsPerHandoff)
	}
	if res.Instances != 1 || res.Waiters != 10 || res.Devices != 2 || res.HoldMS != 20 {
		t.Errorf("settings not reported: %+v", res)
	}
	checkCleanedUp(t, db)
}
