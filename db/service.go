package db

import (
	"context"
	"sync"
	"time"

	"github.com/devalloc/devalloc/db/internal/jitter"
)

// loop runs one background service's goroutine between its Start and its
// Stop. The Allocator starts and stops its services; a test may drive a
// service's passes itself instead, with the loop never started.
type loop struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// start launches run once (a second start before stop does nothing). The
// loop ends at stop, not with ctx's cancellation: ctx carries values only.
func (l *loop) start(ctx context.Context, run func(context.Context)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancel != nil {
		return
	}
	ctx, l.cancel = context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{}) // the goroutine's own: stop clears l.done
	l.done = done
	go func() {
		defer close(done)
		run(ctx)
	}()
}

// stop ends the loop and waits until its goroutine has returned.
func (l *loop) stop() {
	l.mu.Lock()
	cancel, done := l.cancel, l.done
	l.cancel, l.done = nil, nil
	l.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
}

// every runs pass once per period, spread by jitter so that instances
// started together do not query in lockstep, until ctx ends.
func every(ctx context.Context, period time.Duration, pass func(context.Context)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(jitter.Spread(period)):
		}
		pass(ctx)
	}
}
