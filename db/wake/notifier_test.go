package wake

import (
	"encoding/json"
	"strings"
	"testing"
)

// Batches stay under PostgreSQL's payload limit and carry every device; a
// device whose labels alone exceed it goes without them.
func TestNotifierPayloadsStayUnderTheLimit(t *testing.T) {
	n := NewNotifier(nil, NewHub(), nil)
	var batch []idleNotice
	for i := range 500 {
		batch = append(batch, idleNotice{Pool: "pool", Device: int64(i), Labels: json.RawMessage(`{"model":"pixel-8","rack":"r12"}`)})
	}
	huge := `{"blob":"` + strings.Repeat("x", 9000) + `"}`
	batch = append(batch, idleNotice{Pool: "pool", Device: 500, Labels: json.RawMessage(huge)})
	seen := map[int64]bool{}
	payloads := n.payloads(batch)
	if len(payloads) < 2 {
		t.Fatalf("%d payloads for 501 devices", len(payloads))
	}
	for _, p := range payloads {
		if len(p) > MaxPayload {
			t.Fatalf("payload of %d bytes", len(p))
		}
		var b noticeBatch
		if err := json.Unmarshal([]byte(p), &b); err != nil {
			t.Fatal(err)
		}
		for _, d := range b.Idle {
			seen[d.Device] = true
			if d.Device == 500 && d.Labels != nil {
				t.Fatal("the outsized labels were kept")
			}
		}
	}
	if len(seen) != 501 {
		t.Fatalf("%d of 501 devices in the payloads", len(seen))
	}
}
