package devalloctype

import (
	"errors"
	"fmt"
	"testing"
)

func TestLabelsRoundTripThroughJSON(t *testing.T) {
	for _, l := range []Labels{nil, {}, {"os": "android", "model": "pixel-7"}, {"": "\x00é"}} {
		got, err := DecodeLabels(l.JSON())
		if err != nil {
			t.Fatalf("decode %s: %v", l.JSON(), err)
		}
		if !got.Contains(l) || !l.Contains(got) {
			t.Errorf("labels %v came back as %v", l, got)
		}
	}
	if got, err := DecodeLabels(nil); err != nil || got == nil || len(got) != 0 {
		t.Errorf("empty jsonb: %v %v, want empty labels", got, err)
	}
	if _, err := DecodeLabels([]byte(`{"a":1}`)); err == nil {
		t.Error("a label that is not a string was accepted")
	}
}

func TestSelectorKeyAndClone(t *testing.T) {
	a := Selector{Pool: "p", Labels: Labels{"a": "1", "b": "2"}}
	b := Selector{Pool: "p", Labels: Labels{"b": "2", "a": "1"}}
	if a.Key() != b.Key() {
		t.Errorf("equal selectors have keys %q and %q", a.Key(), b.Key())
	}
	if a.Key() == (Selector{Pool: "q", Labels: a.Labels}).Key() {
		t.Error("selectors of two pools share a key")
	}
	c := a.Clone()
	c.Labels["a"] = "changed"
	if a.Labels["a"] != "1" {
		t.Error("a clone shares its labels with the original")
	}
}

func TestLeaseEndedErrorIsErrLeaseEnded(t *testing.T) {
	err := fmt.Errorf("renew: %w", &LeaseEndedError{Lease: Lease{EndReason: EndExpired}})
	if !errors.Is(err, ErrLeaseEnded) {
		t.Errorf("%v is not ErrLeaseEnded", err)
	}
	var ended *LeaseEndedError
	if !errors.As(err, &ended) || ended.Lease.EndReason != EndExpired {
		t.Errorf("%v does not carry its lease", err)
	}
}
