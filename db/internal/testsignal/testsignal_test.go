package testsignal

import (
	"testing"
	"time"
)

func TestSignalDeliversOnlyOnceInitialised(t *testing.T) {
	var s Signal[int]
	s.Signal(1) // inert: nobody asked
	s.Init()
	s.Signal(2)
	if got := s.Wait(t, "a value", time.Second); got != 2 {
		t.Fatalf("got %d, want 2 (the signal sent before Init is not kept)", got)
	}
}

func TestSignalDropsWhatNobodyReads(t *testing.T) {
	var s Signal[int]
	s.Init()
	for i := range buffer + 10 {
		s.Signal(i) // never blocks the service
	}
	if got := s.Wait(t, "the first value", time.Second); got != 0 {
		t.Fatalf("got %d, want 0", got)
	}
}
