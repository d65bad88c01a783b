package httpapi

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/devalloc/devalloc/db"
)

// Metrics are one instance's Prometheus metrics. It is the allocator's
// db.Observer (pass it as db.Config.Observer) and, through Options.Metrics,
// what GET /metrics serves. Labels are bounded: acquire outcomes, probe
// kinds and results, and the pools that exist (read from the database at
// scrape time), never values a client chose.
type Metrics struct {
	reg          *prometheus.Registry
	acquire      *prometheus.HistogramVec
	acquireWait  prometheus.Histogram
	probe        *prometheus.HistogramVec
	reaped       prometheus.Counter
	reapFailed   prometheus.Counter
	listenerConn prometheus.Counter
}

// Latency buckets from half a millisecond (a one-statement acquire) to a
// quarter of an hour (the longest default long-poll).
var (
	acquireBuckets = []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900}
	probeBuckets   = []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2, 5}
)

// NewMetrics creates the metrics on a registry of their own, with Go's
// runtime and process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		acquire: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "devalloc_acquire_duration_seconds",
			Help:    "Acquire calls by outcome (granted, replayed, no_device, unsatisfiable, cancelled, shutting_down, idempotency_key_reused, error), waits included.",
			Buckets: acquireBuckets,
		}, []string{"outcome"}),
		acquireWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "devalloc_acquire_wait_seconds",
			Help:    "Time acquires that found nothing idle spent waiting for a device.",
			Buckets: acquireBuckets,
		}),
		probe: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "devalloc_probe_duration_seconds",
			Help:    "Device probes (at acquire and by the health checker) by probe kind and result (ok, failed).",
			Buckets: probeBuckets,
		}, []string{"kind", "result"}),
		reaped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devalloc_leases_reaped_total",
			Help: "Expired leases this instance ended.",
		}),
		reapFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devalloc_reap_failures_total",
			Help: "Expired leases this instance's reaper could not end (each skipped, logged with its id, retried a minute later).",
		}),
		listenerConn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devalloc_listener_connects_total",
			Help: "Connections of the LISTEN connection; more than one means it reconnected.",
		}),
	}
	m.reg.MustRegister(m.acquire, m.acquireWait, m.probe, m.reaped, m.reapFailed, m.listenerConn,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// AcquireDone implements db.Observer.
func (m *Metrics) AcquireDone(outcome string, took time.Duration) {
	m.acquire.WithLabelValues(outcome).Observe(took.Seconds())
}

// AcquireWaited implements db.Observer.
func (m *Metrics) AcquireWaited(waited time.Duration) { m.acquireWait.Observe(waited.Seconds()) }

// ProbeDone implements db.Observer.
func (m *Metrics) ProbeDone(kind string, took time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "failed"
	}
	m.probe.WithLabelValues(kind, result).Observe(took.Seconds())
}

// LeasesReaped implements db.Observer.
func (m *Metrics) LeasesReaped(n int) { m.reaped.Add(float64(n)) }

// ReapFailed implements db.Observer.
func (m *Metrics) ReapFailed() { m.reapFailed.Inc() }

// ListenerConnected implements db.Observer.
func (m *Metrics) ListenerConnected() { m.listenerConn.Inc() }

// handler serves the metrics, with the allocator's pools and connections
// read at scrape time.
func (m *Metrics) handler(alloc *db.Allocator, log *slog.Logger) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&stateCollector{alloc: alloc, log: log})
	return promhttp.HandlerFor(prometheus.Gatherers{m.reg, reg}, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)})
}

// stateCollector reads, at each scrape, every pool's devices by state and
// this instance's waiting acquires (one query), and the connection pool.
type stateCollector struct {
	alloc *db.Allocator
	log   *slog.Logger
}

var (
	poolDevicesDesc = prometheus.NewDesc("devalloc_pool_devices", "Devices per pool and state (idle, leased, offline, maintenance), from the database.", []string{"pool", "state"}, nil)
	poolWaitingDesc = prometheus.NewDesc("devalloc_pool_waiting", "Requests waiting in the pool's line, across all instances.", []string{"pool"}, nil)
	poolOldestDesc  = prometheus.NewDesc("devalloc_pool_oldest_wait_seconds", "How long the longest-waiting request of the pool's line has waited (0 when none).", []string{"pool"}, nil)
	dbConnsDesc     = prometheus.NewDesc("devalloc_db_connections", "This instance's pool connections by state (acquired, idle, max); the LISTEN connection is one more.", []string{"state"}, nil)
	dbWaitsDesc     = prometheus.NewDesc("devalloc_db_connection_waits_total", "Times a request had to wait for a pool connection.", nil, nil)
	scrapeErrDesc   = prometheus.NewDesc("devalloc_pool_scrape_error", "1 when the pools could not be read from the database at this scrape.", nil, nil)
)

// scrapeTimeout bounds the pool query of one scrape.
const scrapeTimeout = 2 * time.Second

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolDevicesDesc, poolWaitingDesc, poolOldestDesc, dbConnsDesc, dbWaitsDesc, scrapeErrDesc} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.alloc.PoolStat()
	ch <- prometheus.MustNewConstMetric(dbConnsDesc, prometheus.GaugeValue, float64(st.AcquiredConns()), "acquired")
	ch <- prometheus.MustNewConstMetric(dbConnsDesc, prometheus.GaugeValue, float64(st.IdleConns()), "idle")
	ch <- prometheus.MustNewConstMetric(dbConnsDesc, prometheus.GaugeValue, float64(st.MaxConns()), "max")
	ch <- prometheus.MustNewConstMetric(dbWaitsDesc, prometheus.CounterValue, float64(st.EmptyAcquireCount()))

	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	pools, err := c.alloc.Pools(ctx)
	failed := 0.0
	if err != nil {
		// The rest of the scrape is still worth having; the gauge says the
		// pool figures are missing.
		if !errors.Is(err, context.Canceled) {
			c.log.Warn("metrics: could not read the pools", "err", err)
		}
		failed = 1
	}
	ch <- prometheus.MustNewConstMetric(scrapeErrDesc, prometheus.GaugeValue, failed)
	for _, p := range pools {
		for state, n := range map[string]int64{"idle": p.Idle, "leased": p.Leased, "offline": p.Offline, "maintenance": p.Maintenance} {
			ch <- prometheus.MustNewConstMetric(poolDevicesDesc, prometheus.GaugeValue, float64(n), p.Name, state)
		}
		ch <- prometheus.MustNewConstMetric(poolWaitingDesc, prometheus.GaugeValue, float64(p.Waiting), p.Name)
		ch <- prometheus.MustNewConstMetric(poolOldestDesc, prometheus.GaugeValue, p.OldestWait.Seconds(), p.Name)
	}
}
