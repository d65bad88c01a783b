package bench

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the progress goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestProgressDrawsAndClearsItsLine(t *testing.T) {
	var out syncBuffer
	p := &Progress{w: &out, on: true}
	p.Begin("cycle 4 clients", 10*time.Second, func() string { return "7 cycles" })
	p.Begin("floor", 0, nil) // replaces the first phase
	p.End()
	p.End() // harmless
	s := out.String()
	for _, want := range []string{"\r\033[Kcycle 4 clients  0.", "s/10s  7 cycles", "\r\033[Kfloor  0."} {
		if !strings.Contains(s, want) {
			t.Errorf("output %q lacks %q", s, want)
		}
	}
	if !strings.HasSuffix(s, "\r\033[K") {
		t.Errorf("line not cleared at the end: %q", s)
	}
}

func TestProgressIsQuiet(t *testing.T) {
	var out bytes.Buffer
	for _, p := range []*Progress{NewProgress(&out, false), NewProgress(&out, true), nil} {
		p.Begin("x", time.Second, func() string { return "n" })
		p.End()
	}
	if out.Len() != 0 {
		t.Errorf("wrote %q to a non-terminal", out.String())
	}
}
