package bench

import (
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/httpapi/apitest"
)

// startAPI runs a real API in-process on a fresh database and wraps it
// the way "devalloc bench --url" would.
func startAPI(t *testing.T) (*Instances, *pgxpool.Pool) {
	t.Helper()
	srv := apitest.Start(t, apitest.Options{})
	return Wrap(srv.Key(t, "bench", "admin"), srv.URL+"/"), srv.Pool
}

// checkLatency fails unless l has samples and ordered, positive
// percentiles.
func checkLatency(t *testing.T, what string, l Latency) {
	t.Helper()
	if l.N == 0 || l.P50 <= 0 || l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.Max {
		t.Errorf("%s latency not sane: %+v", what, l)
	}
}

// poolsLeft counts the devices and leases of bench pools still in the
// database: every scenario must clean up after itself.
func poolsLeft(t *testing.T, db *pgxpool.Pool) (devices, leases int) {
	t.Helper()
	err := db.QueryRow(t.Context(), `
		SELECT (SELECT count(*) FROM devalloc.devices WHERE pool LIKE 'bench-%'),
		       (SELECT count(*) FROM devalloc.leases WHERE pool LIKE 'bench-%')`).Scan(&devices, &leases)
	if err != nil {
		t.Fatal(err)
	}
	return devices, leases
}

func checkCleanedUp(t *testing.T, db *pgxpool.Pool) {
	t.Helper()
	if d, l := poolsLeft(t, db); d != 0 || l != 0 {
		t.Errorf("left behind %d devices and %d leases", d, l)
	}
}
