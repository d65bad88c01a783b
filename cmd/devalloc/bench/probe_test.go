package bench

import (
	"math"
	"testing"
)

func TestProbe(t *testing.T) {
	in, db := startAPI(t)
	res, err := Probe(t.Context(), ProbeOptions{Instances: in, DB: db, Cycles: 20, Warmup: 2})
	if err != nil {
		t.Fatal(err)
	}
	checkLatency(t, "none", res.None)
	checkLatency(t, "tcp", res.TCP)
	if res.None.N != 20 || res.TCP.N != 20 || res.Fresh != nil {
		t.Errorf("result: %+v", res)
	}
	if math.Abs(res.OverheadP50-(res.TCP.P50-res.None.P50)) > 1e-9 {
		t.Errorf("overhead %v of %v and %v", res.OverheadP50, res.TCP.P50, res.None.P50)
	}
	checkCleanedUp(t, db)
}
