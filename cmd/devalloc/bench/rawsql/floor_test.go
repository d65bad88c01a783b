package rawsql

import (
	"testing"
	"time"

	"github.com/devalloc/devalloc/db/dbtest"
)

func TestFloor(t *testing.T) {
	ctx := testContext(t)
	url := dbtest.NewDB(t)
	cps, err := Floor(ctx, url, 4, 8, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if cps <= 0 {
		t.Errorf("Floor = %v cycles/s, want > 0", cps)
	}
	t.Logf("floor: %.0f cycles/s", cps)
	assertNoRawSchemas(ctx, t, url)
}

// TestFloorNeedsADevicePerClient: as raw-ceiling, Floor refuses to run
// SKIP LOCKED picks that could come back empty.
func TestFloorNeedsADevicePerClient(t *testing.T) {
	if _, err := Floor(testContext(t), "postgres://unused", 4, 2, time.Second); err == nil {
		t.Error("Floor with 2 devices for 4 clients: no error")
	}
}
