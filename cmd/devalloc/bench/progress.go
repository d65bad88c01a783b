package bench

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// progressEvery is how often the progress line is redrawn: lively for a
// human, negligible next to the load.
const progressEvery = 250 * time.Millisecond

// Progress keeps one line on a terminal up to date with what the bench is
// doing: the scenario, time elapsed of its total, and a live count (cycles,
// waiters...). It writes nothing when quiet or when its writer is not a
// terminal (a CI log, a file), where a line rewritten with \r is noise. A
// nil *Progress is valid and silent, so scenarios need no checks.
type Progress struct {
	w  io.Writer
	on bool

	mu   sync.Mutex
	stop chan struct{} // closes to end the current phase; nil when none
	done chan struct{} // closed when the current phase's last write is done
}

// NewProgress reports on w (normally os.Stderr) unless quiet.
func NewProgress(w io.Writer, quiet bool) *Progress {
	return &Progress{w: w, on: !quiet && isTerminal(w)}
}

// Begin shows a phase named name, expected to take total (0: unknown),
// with count() appended (nil: nothing), until End or the next Begin.
// count is called from another goroutine, so it must be safe for that
// (an atomic load, say).
func (p *Progress) Begin(name string, total time.Duration, count func() string) {
	if p == nil || !p.on {
		return
	}
	p.End()
	p.mu.Lock()
	defer p.mu.Unlock()
	stop, done := make(chan struct{}), make(chan struct{})
	p.stop, p.done = stop, done
	start := time.Now()
	go func() {
		defer close(done)
		tick := time.NewTicker(progressEvery)
		defer tick.Stop()
		for {
			fmt.Fprint(p.w, progressLine(name, time.Since(start), total, count))
			select {
			case <-stop:
				fmt.Fprint(p.w, "\r\033[K") // leave the line clean for what follows
				return
			case <-tick.C:
			}
		}
	}()
}

// End clears the line and returns once nothing more will be written.
func (p *Progress) End() {
	if p == nil || !p.on {
		return
	}
	p.mu.Lock()
	stop, done := p.stop, p.done
	p.stop, p.done = nil, nil
	p.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
}

// progressLine is one redraw: "\r", clear to the end of the line, then
// e.g. "cycle 32 clients  3.2s/10s  12345 cycles".
func progressLine(name string, elapsed, total time.Duration, count func() string) string {
	line := "\r\033[K" + name + "  " + fmt.Sprintf("%.1fs", elapsed.Seconds())
	if total > 0 {
		line += "/" + total.Round(100*time.Millisecond).String()
	}
	if count != nil {
		line += "  " + count()
	}
	return line
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
