package bench

import (
	"testing"
)

func TestDropPoolTakesActiveLeasesAndSparesOtherPools(t *testing.T) {
	in, db := startAPI(t)
	c := newClient(in.Key(), 2)
	defer c.close()
	for _, pool := range []string{"bench-drop", "other"} {
		if err := registerDevices(t.Context(), c, in.URL(0), pool, 3, "none", "127.0.0.1:9", FarmLabels); err != nil {
			t.Fatal(err)
		}
		// One active lease and one ended lease in each pool.
		body := encode(acquireRequest{Pool: pool})
		ended, err := c.acquire(t.Context(), in.URL(0), body)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.release(t.Context(), in.URL(0), ended.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := c.acquire(t.Context(), in.URL(0), body); err != nil {
			t.Fatal(err)
		}
	}
	if err := dropPool(db, "bench-drop"); err != nil {
		t.Fatal(err)
	}
	var devices, leases int
	err := db.QueryRow(t.Context(), `
		SELECT (SELECT count(*) FROM devalloc.devices WHERE pool = $1),
		       (SELECT count(*) FROM devalloc.leases WHERE pool = $1)`, "other").Scan(&devices, &leases)
	if err != nil {
		t.Fatal(err)
	}
	if devices != 3 || leases != 2 {
		t.Errorf("other pool: %d devices, %d leases; want 3 and 2", devices, leases)
	}
	checkCleanedUp(t, db)
}

func TestRegisteredDevicesCarryTheFarmsLabels(t *testing.T) {
	in, db := startAPI(t)
	c := newClient(in.Key(), 2)
	defer c.close()
	if err := registerDevices(t.Context(), c, in.URL(0), "bench-labels", 12, "none", "127.0.0.1:9", FarmLabels); err != nil {
		t.Fatal(err)
	}
	var withOS, models int
	err := db.QueryRow(t.Context(), `
		SELECT count(*) FILTER (WHERE labels @> '{"os": "14"}'), count(DISTINCT labels->>'model')
		FROM devalloc.devices WHERE pool = 'bench-labels'`).Scan(&withOS, &models)
	if err != nil {
		t.Fatal(err)
	}
	if withOS != 12 || models != 10 {
		t.Errorf("%d of 12 devices labelled os 14, %d models; want 12 and 10", withOS, models)
	}
}
