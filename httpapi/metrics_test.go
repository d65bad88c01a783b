package httpapi

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// scrape returns GET /metrics, without credentials.
func (e *env) scrape() string {
	e.t.Helper()
	resp, err := http.Get(e.srv.URL + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		e.t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return string(body)
}

// metricValue is the value of the sample named exactly series (name and
// labels as exposed), or -1 when absent.
func metricValue(text, series string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return -1
	}
	return v
}

// /metrics, served without credentials, counts acquires by outcome, waits,
// probes by result, expiries and listener connections, and shows each
// pool's devices by state and the instance's connections.
func TestMetrics(t *testing.T) {
	e := newEnvWith(t, Options{Authenticate: testKeys, Metrics: NewMetrics()})
	admin := e.as("root")
	admin.do("POST", "/v1/devices", map[string]any{"name": "board-1", "pool": "lab", "address": "127.0.0.1:1", "probe": "tcp"})
	admin.do("POST", "/v1/devices", map[string]any{"name": "board-2", "pool": "lab", "address": deadAddress, "probe": "tcp"})

	held := admin.acquire(map[string]any{"pool": "lab"})                                                        // probes board-1: ok
	expect(t, admin.do("POST", "/v1/leases", map[string]any{"pool": "lab"}), http.StatusServiceUnavailable)     // board-2 fails its probe
	expect(t, admin.do("POST", "/v1/leases", map[string]any{"pool": "nosuch"}), http.StatusUnprocessableEntity) // unsatisfiable
	expect(t, admin.do("POST", "/v1/leases", map[string]any{"pool": "lab", "wait_seconds": 1}), http.StatusServiceUnavailable)
	expect(t, admin.do("DELETE", "/v1/leases/"+held.ID.String(), nil), http.StatusNoContent)
	admin.acquire(map[string]any{"pool": "lab", "ttl_seconds": 1}) // left to expire

	waitFor(t, "the expired lease to be reaped", func() bool {
		return metricValue(e.scrape(), "devalloc_leases_reaped_total") == 1
	})
	text := e.scrape()
	for series, want := range map[string]float64{
		`devalloc_acquire_duration_seconds_count{outcome="granted"}`:       2,
		`devalloc_acquire_duration_seconds_count{outcome="no_device"}`:     2,
		`devalloc_acquire_duration_seconds_count{outcome="unsatisfiable"}`: 1,
		`devalloc_acquire_wait_seconds_count`:                              1,
		`devalloc_probe_duration_seconds_count{kind="tcp",result="ok"}`:    2,
		`devalloc_leases_reaped_total`:                                     1,
		`devalloc_reap_failures_total`:                                     0,
		`devalloc_listener_connects_total`:                                 1,
		`devalloc_pool_devices{pool="lab",state="idle"}`:                   1,
		`devalloc_pool_devices{pool="lab",state="offline"}`:                1,
		`devalloc_pool_devices{pool="lab",state="leased"}`:                 0,
		`devalloc_pool_waiting{pool="lab"}`:                                0,
		`devalloc_pool_oldest_wait_seconds{pool="lab"}`:                    0,
		`devalloc_pool_scrape_error`:                                       0,
	} {
		if got := metricValue(text, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	// The health checker may have re-probed the dead device meanwhile.
	if failed := metricValue(text, `devalloc_probe_duration_seconds_count{kind="tcp",result="failed"}`); failed < 1 {
		t.Errorf("failed probes = %v, want at least 1", failed)
	}
	if wait := metricValue(text, `devalloc_acquire_wait_seconds_sum`); wait < 0.9 || wait > 3 {
		t.Errorf("waited %v s in all, want about 1", wait)
	}
	if max := metricValue(text, `devalloc_db_connections{state="max"}`); max <= 0 {
		t.Errorf("db connections max = %v", max)
	}
	if !strings.Contains(text, "go_goroutines") || !strings.Contains(text, "process_resident_memory_bytes") {
		t.Error("runtime and process metrics missing")
	}
}

// Without Options.Metrics there is no /metrics.
func TestNoMetricsWithoutOptions(t *testing.T) {
	e := newEnv(t, nil)
	expect(t, e.do("GET", "/metrics", nil), http.StatusNotFound)
}
