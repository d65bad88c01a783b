// Package bench is "devalloc bench": it drives devalloc instances over HTTP
// (acquire → hold → release cycles, long-poll handoffs, many waiters, large
// device tables), runs the bare-SQL floor and the naive designs on the same
// database, and reports every figure as one JSON document.
package bench

// Report is everything one bench run measured. Sections a run did not do
// are nil/empty. It is printed as one JSON line on stdout and is what
// "devalloc bench plot" reads.
type Report struct {
	Date    string  `json:"date"` // RFC 3339, UTC
	Command string  `json:"command"`
	Machine Machine `json:"machine"`

	// Cycle: C clients doing acquire → release over HTTP on K devices,
	// interleaved with the bare-SQL floor on the same database.
	Cycle *CycleResult `json:"cycle,omitempty"`
	// Sweep: the cycle scenario at several client counts (for the plot).
	Sweep []SweepPoint `json:"sweep,omitempty"`
	// Handoff: waiting clients outnumber devices; each release hands the
	// device to a waiter.
	Handoff *HandoffResult `json:"handoff,omitempty"`
	// Waiters: many concurrent long-polls; connections, memory, DB load.
	Waiters *WaitersResult `json:"waiters,omitempty"`
	// Scale: acquire latency against the number of registered devices.
	Scale []ScalePoint `json:"scale,omitempty"`
	// ScaleAfterLoad: Scale on a database that has just carried the
	// scenarios before it (the cycle, the handoff), with no VACUUM in
	// between: what a farm that has run for months sees, rather than a
	// fresh table.
	ScaleAfterLoad []ScalePoint `json:"scale_after_load,omitempty"`
	// Probe: what probing (tcp to loopback) adds to an acquire.
	Probe *ProbeResult `json:"probe,omitempty"`
	// Baselines: naive allocator designs in bare SQL, side by side.
	Baselines []BaselineResult `json:"baselines,omitempty"`
	// Notify: the cost of NOTIFY on release, three ways.
	Notify []NotifyResult `json:"notify,omitempty"`
	// Targets: each target of the performance issue, measured.
	Targets []TargetCheck `json:"targets,omitempty"`
}

// Machine describes where the figures came from.
type Machine struct {
	CPUs       int    `json:"cpus"`
	GoVersion  string `json:"go_version"`
	Postgres   string `json:"postgres"` // server_version
	Fsync      string `json:"fsync"`
	SyncCommit string `json:"synchronous_commit"`
	// Autovacuum is the server's autovacuum setting: with it off, dead
	// row versions pile up over a run and later scenarios pay for them,
	// which no production server does.
	Autovacuum string `json:"autovacuum"`
}

// Latency summarises a set of durations, in milliseconds.
type Latency struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// CycleResult is the throughput scenario.
type CycleResult struct {
	Instances int    `json:"instances"`
	Clients   int    `json:"clients"`
	Devices   int    `json:"devices"`
	Probe     string `json:"probe"`
	// DeviceLabels are the labels every device carries (FarmLabels).
	DeviceLabels string  `json:"device_labels"`
	Seconds      float64 `json:"seconds"` // per run
	Rounds       int     `json:"rounds"`  // interleaved devalloc/raw pairs
	// CyclesPerSec and RawCyclesPerSec are the medians over the rounds.
	CyclesPerSec    float64   `json:"cycles_per_sec"`
	RawCyclesPerSec float64   `json:"raw_cycles_per_sec"`
	Ratio           float64   `json:"ratio"` // CyclesPerSec / RawCyclesPerSec
	RoundsCPS       []float64 `json:"rounds_cycles_per_sec"`
	RoundsRawCPS    []float64 `json:"rounds_raw_cycles_per_sec"`
	Acquire         Latency   `json:"acquire"`
	Release         Latency   `json:"release"`
	Errors          int       `json:"errors"`
	// DBConnections is the most connections the instances held at once
	// (pg_stat_activity, sampled).
	DBConnections int `json:"db_connections"`
}

// SweepPoint is the cycle scenario at one client count.
type SweepPoint struct {
	Clients         int     `json:"clients"`
	CyclesPerSec    float64 `json:"cycles_per_sec"`
	RawCyclesPerSec float64 `json:"raw_cycles_per_sec"`
	AcquireP50      float64 `json:"acquire_p50_ms"`
	AcquireP99      float64 `json:"acquire_p99_ms"`
	Errors          int     `json:"errors"`
}

// HandoffResult is the contention scenario: Waiters clients on Instances
// instances share Devices devices, each holding a lease HoldMS.
type HandoffResult struct {
	Instances int `json:"instances"`
	Waiters   int `json:"waiters"`
	Devices   int `json:"devices"`
	// DeviceLabels are the labels every device carries (FarmLabels).
	DeviceLabels string  `json:"device_labels"`
	HoldMS       float64 `json:"hold_ms"`
	Seconds      float64 `json:"seconds"`
	Handoffs     int     `json:"handoffs"`
	// Handoff is from the moment a holder sends its release to the moment
	// the waiting client that gets the device reads its 201.
	Handoff Latency `json:"handoff"`
	// CommitsPerHandoff is the database's commits (xact_commit, read-only
	// transactions included) per handoff over the run. PostgreSQL publishes
	// these counts up to seconds late, so it is approximate.
	CommitsPerHandoff float64 `json:"commits_per_handoff"`
	// WritesPerHandoff is the transactions that wrote (each a WAL flush)
	// per handoff, counted exactly by transaction ids.
	WritesPerHandoff float64 `json:"writes_per_handoff"`
	Errors           int     `json:"errors"`
}

// WaitersResult is the many-long-polls scenario.
type WaitersResult struct {
	Instances int `json:"instances"`
	Waiters   int `json:"waiters"`
	// ConnsPerInstance is the most database connections each instance
	// held while its waiters waited.
	ConnsPerInstance []int `json:"conns_per_instance"`
	// RSSPerWaiterBytes is each instance's resident memory growth divided
	// by the waiters it held.
	RSSPerWaiterBytes []float64 `json:"rss_per_waiter_bytes"`
	// Load is the database's transactions per second while everyone
	// waits, at each waiter count: flat means re-checks are per instance
	// and pool, not per waiter.
	Load []WaitLoad `json:"load"`
	// Served is how many waiters got a device when devices were added at
	// the end (all of them should).
	Served int `json:"served"`
	Errors int `json:"errors"`
}

// WaitLoad is the database load at one number of waiters.
type WaitLoad struct {
	Waiters     int     `json:"waiters"`
	XactsPerSec float64 `json:"xacts_per_sec"`
}

// ScalePoint is acquire latency with Devices devices registered.
type ScalePoint struct {
	Devices int `json:"devices"`
	// Acquire: any device of the pool. Labeled: a selector that matches
	// 0.1 % of the devices.
	Acquire Latency  `json:"acquire"`
	Labeled *Latency `json:"labeled,omitempty"`
}

// ProbeResult compares acquire latency without a probe, with a tcp probe
// to a loopback listener, and with the freshness window skipping it.
type ProbeResult struct {
	None  Latency  `json:"none"`
	TCP   Latency  `json:"tcp"`
	Fresh *Latency `json:"fresh,omitempty"`
	// OverheadP50 is TCP.P50 - None.P50.
	OverheadP50 float64 `json:"overhead_p50_ms"`
}

// BaselineResult is one naive (or the real) design run in bare SQL.
type BaselineResult struct {
	Design            string  `json:"design"`
	Clients           int     `json:"clients"`
	Devices           int     `json:"devices"`
	Seconds           float64 `json:"seconds"`
	CyclesPerSec      float64 `json:"cycles_per_sec"`
	DoubleAllocations int     `json:"double_allocations"`
	// OverlappingLeases cross-checks DoubleAllocations in SQL: leases that
	// began while an earlier lease of the same device was active (it can be
	// lower: a naive acquire between the release's two UPDATEs counts only
	// in the ledger).
	OverlappingLeases int `json:"overlapping_leases"`
	// Retries are acquire attempts that found no device (an empty pick, a
	// guarded UPDATE that matched nothing); they are not cycles.
	Retries int64   `json:"retries"`
	Acquire Latency `json:"acquire"`
}

// NotifyResult is release cycles with NOTIFY sent one way.
type NotifyResult struct {
	Mode         string  `json:"mode"` // in-transaction | after-commit | coalesced
	Clients      int     `json:"clients"`
	Seconds      float64 `json:"seconds"`
	CyclesPerSec float64 `json:"cycles_per_sec"`
	// Delivery is from the release's commit to a listener receiving the
	// notification that covers it.
	Delivery Latency `json:"delivery"`
	// Releases made, and the notifications that covered them (fewer when
	// coalesced; every release was covered, or the run failed).
	Releases      int `json:"releases"`
	Notifications int `json:"notifications"`
}

// TargetCheck is one target and what was measured against it.
type TargetCheck struct {
	Name     string `json:"name"`
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}
