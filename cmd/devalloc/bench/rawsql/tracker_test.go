package rawsql

import (
	"testing"
	"time"
)

func TestTracker(t *testing.T) {
	t0 := time.Now()
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	tr := newTracker()
	tr.register("1", ms(0))
	tr.receive("1", ms(3)) // delivered in 3 ms
	tr.receive("2", ms(5)) // before its release was registered: counts 0
	tr.register("2", ms(6))
	tr.register("b1", ms(1), ms(2), ms(4)) // one notification, three releases
	tr.register("3", ms(7))                // never notified
	tr.seal()
	select {
	case <-tr.allDelivered():
		t.Fatal("all delivered while release 3 and batch b1 wait")
	default:
	}
	tr.receive("b1", ms(10))
	tr.receive("b1", ms(11)) // twice: a stray
	tr.receive("x", ms(12))  // covers nothing: a stray

	r := tr.report()
	if r.releases != 6 || r.missing != 1 || r.overtook != 1 || r.notices != 3 || r.strays != 2 {
		t.Errorf("releases %d missing %d overtook %d notices %d strays %d, want 6, 1, 1, 3, 2",
			r.releases, r.missing, r.overtook, r.notices, r.strays)
	}
	// Deliveries: 3, 0, 9, 8, 6 ms.
	if r.delivery.N != 5 || r.delivery.Max != 9 || r.delivery.P50 != 6 {
		t.Errorf("delivery %+v, want n=5 p50=6 max=9", r.delivery)
	}

	tr.receive("3", ms(13))
	select {
	case <-tr.allDelivered():
	default:
		t.Error("not all delivered after the last notification")
	}
}
