package bench

import (
	"testing"
)

func TestMonitorCountsConnectionsAndTransactions(t *testing.T) {
	_, db := startAPI(t)
	mon, err := openMonitor(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.close()
	if mon.datname == "" || mon.datname == "postgres" {
		t.Fatalf("monitor watches %q", mon.datname)
	}
	// Hold two connections of the test database's pool.
	for range 2 {
		conn, err := db.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
	}
	all, err := mon.conns(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if all[""] < 2 {
		t.Errorf("all connections: %v", all)
	}
	named, err := mon.conns(t.Context(), []string{"no-such-instance"})
	if err != nil || len(named) != 0 {
		t.Errorf("named connections: %v, %v", named, err)
	}
	if c, r, err := mon.xacts(t.Context()); err != nil || c < 0 || r < 0 {
		t.Errorf("xacts %d %d %v", c, r, err)
	}

	s := startConnSampler(t.Context(), mon, nil)
	peak, each, err := s.stop()
	if err != nil || peak < 2 || each[""] != peak {
		t.Errorf("sampler: peak %d, %v, %v", peak, each, err)
	}
}
