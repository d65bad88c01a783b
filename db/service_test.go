package db

import (
	"context"
	"sync/atomic"
	"testing"
)

// A loop runs once however often it is started, Stop waits for it to
// return, stopping a loop never started does nothing, and a stopped loop
// can be started again.
func TestLoopStartsOnceAndStopWaits(t *testing.T) {
	var l loop
	l.stop() // never started
	var running, ran atomic.Int32
	entered := make(chan struct{}, 2)
	body := func(ctx context.Context) {
		running.Add(1)
		entered <- struct{}{}
		<-ctx.Done()
		running.Add(-1)
		ran.Add(1)
	}
	l.start(t.Context(), body)
	l.start(t.Context(), body) // already running: nothing
	<-entered
	l.stop()
	if running.Load() != 0 || ran.Load() != 1 {
		t.Fatalf("after stop: %d running, %d ran; want 0 and 1", running.Load(), ran.Load())
	}
	l.start(t.Context(), body)
	<-entered
	l.stop()
	if ran.Load() != 2 {
		t.Fatalf("a restarted loop ran %d times in all, want 2", ran.Load())
	}
}
