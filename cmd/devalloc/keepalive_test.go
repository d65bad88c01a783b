package main

import (
	neturl "net/url"
	"testing"

	"github.com/devalloc/devalloc/db/dbtest"
)

// libpq's keepalive settings in DATABASE_URL override devalloc's defaults
// on both ends (pgx alone would send them to the server, which refuses
// keepalives_idle as an unknown parameter), and the listener's URL is
// tuned the same way.
func TestKeepaliveSettingsInTheURLOverrideTheDefaults(t *testing.T) {
	u, err := neturl.Parse(dbtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	for k, v := range map[string]string{"keepalives_idle": "7", "keepalives_interval": "3", "keepalives_count": "2", "tcp_user_timeout": "12000"} {
		q.Set(k, v)
	}
	u.RawQuery = q.Encode()
	url := u.String()
	pool, err := openPool(t.Context(), url, 2, nil)
	if err != nil {
		t.Fatalf("open a pool with libpq's keepalive settings in the URL: %v", err)
	}
	defer pool.Close()
	for k, want := range map[string]string{"tcp_keepalives_idle": "7", "tcp_keepalives_interval": "3", "tcp_keepalives_count": "2", "tcp_user_timeout": "12000"} {
		var got string
		if err := pool.QueryRow(t.Context(), "SHOW "+k).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("server's %s = %q, want %q", k, got, want)
		}
	}
	if err := checkDatabase(t.Context(), url); err != nil {
		t.Errorf("check the database at a URL with keepalive settings: %v", err)
	}
	cfg, err := listenConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	if _, leaked := cfg.RuntimeParams["keepalives_idle"]; leaked || cfg.RuntimeParams["tcp_keepalives_idle"] != "7" {
		t.Errorf("listener's runtime params %v: want tcp_keepalives_idle=7 and no keepalives_idle", cfg.RuntimeParams)
	}
}
