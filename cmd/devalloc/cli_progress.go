package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// progressDelay is how long an acquire may take before it says it waits:
// an acquire answered at once prints nothing.
const progressDelay = time.Second

// progress reports on stderr that an acquire is waiting. On a terminal it
// keeps one line updated with the time waited; anywhere else (a CI log) it
// prints one line.
type progress struct {
	w    io.Writer
	tty  bool
	what string
	max  time.Duration

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// startProgress starts reporting the wait for what (e.g. `pool "android"`),
// of at most max. Call stop before writing anything else to w.
func startProgress(w io.Writer, what string, max time.Duration) *progress {
	p := &progress{w: w, tty: isTerminal(w), what: what, max: max, stop: make(chan struct{}), done: make(chan struct{})}
	go p.run()
	return p
}

func (p *progress) run() {
	defer close(p.done)
	start := time.Now()
	select {
	case <-p.stop:
		return
	case <-time.After(progressDelay):
	}
	if !p.tty {
		fmt.Fprintf(p.w, "devalloc: waiting up to %s for a device in %s...\n", human(p.max), p.what)
		return
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		fmt.Fprintf(p.w, "\r\033[Kwaiting for a device in %s (%s of %s)...", p.what, human(time.Since(start)), human(p.max))
		select {
		case <-p.stop:
			fmt.Fprint(p.w, "\r\033[K") // leave the terminal line clean
			return
		case <-tick.C:
		}
	}
}

// end stops the reporting and waits until it has written its last byte.
func (p *progress) end() {
	p.stopOnce.Do(func() { close(p.stop) })
	<-p.done
}

// isTerminal reports whether w is a terminal: a character device other
// than /dev/null.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	null, err := os.Stat(os.DevNull)
	return err != nil || !os.SameFile(fi, null)
}
