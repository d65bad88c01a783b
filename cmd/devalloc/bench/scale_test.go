package bench

import (
	"testing"
)

func TestScale(t *testing.T) {
	in, db := startAPI(t)
	points, err := Scale(t.Context(), ScaleOptions{
		Instances: in, DB: db, Counts: []int{2100, 10}, Cycles: 20, Warmup: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(points) != 2 || points[0].Devices != 10 || points[1].Devices != 2100 {
		t.Fatalf("points: %+v", points)
	}
	for _, p := range points {
		checkLatency(t, "acquire", p.Acquire)
		if p.Acquire.N != 20 || p.Labeled == nil || p.Labeled.N != 20 {
			t.Errorf("%d devices: %+v", p.Devices, p)
			continue
		}
		checkLatency(t, "labeled", *p.Labeled)
	}
	checkCleanedUp(t, db)
}

func TestScaleDevicesMatchOneInAThousand(t *testing.T) {
	_, db := startAPI(t)
	if err := insertScaleDevices(t.Context(), db, "bench-scale-t", 0, 10, nil); err != nil {
		t.Fatal(err)
	}
	if err := insertScaleDevices(t.Context(), db, "bench-scale-t", 10, 3001, nil); err != nil {
		t.Fatal(err)
	}
	var all, rare, withOS, models int
	err := db.QueryRow(t.Context(), `
		SELECT count(*), count(*) FILTER (WHERE labels @> '{"model":"rare"}'),
		       count(*) FILTER (WHERE labels @> '{"os":"14"}'), count(DISTINCT labels->>'model')
		FROM devalloc.devices WHERE pool = 'bench-scale-t'`).Scan(&all, &rare, &withOS, &models)
	if err != nil {
		t.Fatal(err)
	}
	// Devices 0, 1000, 2000 and 3000 are rare; every device is labelled as
	// a farm's are (ten models and the rare one, one OS).
	if all != 3001 || rare != 4 || withOS != all || models != 11 {
		t.Errorf("%d devices, %d rare, %d with os 14, %d models", all, rare, withOS, models)
	}
	if err := dropPool(db, "bench-scale-t"); err != nil {
		t.Fatal(err)
	}
	checkCleanedUp(t, db)
}
