//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db/dbtest/pgcluster"
	"github.com/devalloc/devalloc/httpapi/client"
)

// Bounds the invariants hold the instances to.
const (
	// answerSlack: every acquire is answered within wait_seconds + this.
	answerSlack = time.Second
	// clientSlack: the harness's client timeout is wait_seconds + this; an
	// acquire still unanswered then hung.
	clientSlack = 3 * time.Second
	// defaultIdleInTxBound: no session of the database sits idle in a
	// transaction longer than this (an acquire transaction is idle only
	// while it probes, at most the probe timeout at a time).
	defaultIdleInTxBound = 10 * time.Second
)

// scenario configures one harness run.
type scenario struct {
	instances    int
	maxConns     int
	probeTimeout time.Duration
	reapInterval time.Duration
	// serverURL is the PostgreSQL server (a maintenance database URL);
	// empty means the shared one.
	serverURL string
	// extraArgs go to every "devalloc serve".
	extraArgs []string
	// lateSlack widens the wait + answerSlack bound (hanging probes).
	lateSlack time.Duration
	// urlParams are appended to the instances' database URL, e.g.
	// "lock_timeout=300" (pgx sends unknown URL parameters as session
	// settings, which win over ALTER DATABASE ... SET and over the
	// instance's own defaults).
	urlParams string
	// idleInTxBound overrides defaultIdleInTxBound (a frozen instance's
	// sessions stay idle in transaction until PostgreSQL ends them).
	idleInTxBound time.Duration
	// beforeStart runs once the database is migrated, before any instance
	// starts.
	beforeStart func(h *harness)
	// measureOnly reports broken invariants in the summary without failing
	// the test: a measurement of what a configuration known to be unsafe
	// (asynchronous replication) loses.
	measureOnly bool
}

func (sc *scenario) defaults() {
	if sc.instances == 0 {
		sc.instances = 3
	}
	if sc.maxConns == 0 {
		sc.maxConns = 5
	}
	if sc.probeTimeout == 0 {
		sc.probeTimeout = time.Second
	}
	if sc.reapInterval == 0 {
		sc.reapInterval = 200 * time.Millisecond
	}
	if sc.serverURL == "" {
		sc.serverURL = sharedServerURL()
	}
	if sc.idleInTxBound == 0 {
		sc.idleInTxBound = defaultIdleInTxBound
	}
}

// connBound is the most connections the instances may hold together:
// each its pool plus its LISTEN connection.
func (sc *scenario) connBound() int { return sc.instances * (sc.maxConns + 1) }

// reapBound: an expired lease is ended by the reaper within this of its
// expiry (the reap interval, jittered, plus room for a loaded machine).
func (sc *scenario) reapBound() time.Duration { return sc.reapInterval*12/10 + 1500*time.Millisecond }

// window is a span of time in which the database was deliberately made
// unavailable (restarted, locked); reaper latency is not judged in it.
type window struct{ from, to time.Time }

// harness runs one scenario: its database, instances, devices, clients,
// ledger and checks.
type harness struct {
	t     *testing.T
	ctx   context.Context
	name  string
	sc    scenario
	db    *database
	insts []*instance
	farm  *farm

	adminKey, clientKey string
	transport           *http.Transport
	httpClient          *http.Client

	stats *stats
	led   *ledger

	began      time.Time
	nextClient atomic.Int64
	orphans    atomic.Int64 // leases granted to clients that vanished before reading them

	mu       sync.Mutex
	faults   []string
	dbFaults []window
	devices  []string
	conns    connWatch
	notes    []string

	monitorStop chan struct{}
	monitorDone chan struct{}
	// onSample, if set, runs at every monitor tick (soak tables).
	onSample func(connSample)
}

// connWatch is what the monitor saw of the database's connections.
type connWatch struct {
	samples      int
	maxTotal     int
	maxTotalAt   time.Duration
	maxIdleInTx  time.Duration
	overBound    int
	idleTooLong  int
	firstOver    string
	firstIdleLng string
}

// newHarness creates the scenario's database, keys and instances. The
// instances are stopped, the devices closed and the database dropped when
// the test ends.
func newHarness(t *testing.T, sc scenario) *harness {
	t.Helper()
	sc.defaults()
	h := &harness{
		t: t, ctx: context.Background(), name: t.Name(), sc: sc,
		farm:  &farm{},
		stats: newStats(),
		led:   newLedger(),
	}
	h.db = newDatabase(t, sc.serverURL)
	h.transport = &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     30 * time.Second,
	}
	h.httpClient = &http.Client{Transport: h.transport}
	// Not t.TempDir: that is removed before this cleanup could print the
	// logs of a failed scenario.
	logDir, err := os.MkdirTemp("", "devalloc-chaos-logs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.stopMonitor()
		var wg sync.WaitGroup
		for _, in := range h.insts {
			wg.Go(in.shutdown)
		}
		wg.Wait()
		h.transport.CloseIdleConnections()
		h.farm.close()
		if t.Failed() {
			for _, in := range h.insts {
				t.Logf("instance %d log (%s), last lines:\n%s", in.idx, in.logPath, in.logTail(4000))
			}
		}
		if os.Getenv("DEVALLOC_CHAOS_KEEP_LOGS") != "" {
			t.Logf("instance logs kept in %s", logDir)
		} else {
			os.RemoveAll(logDir)
		}
	})

	// The client key, made on the database as an operator would (this
	// also creates the schema).
	out, err := exec.Command(devallocBin, "keys", "create", "--name", "chaos-client", "--role", "client",
		"--database-url", h.db.url, "--log-level", "error").Output()
	if err != nil {
		t.Fatalf("devalloc keys create: %v: %s", err, stderrOf(err))
	}
	h.clientKey = strings.TrimSpace(string(out))
	h.adminKey = "chaos-admin-" + randomHex(16)
	if sc.beforeStart != nil {
		sc.beforeStart(h)
	}

	instURL := withParams(h.db.url, sc.urlParams)
	for i := range sc.instances {
		ip := fmt.Sprintf("127.0.0.%d", 11+i)
		port, err := pgcluster.FreePort(ip)
		if err != nil {
			t.Fatal(err)
		}
		in := &instance{idx: i, addr: fmt.Sprintf("%s:%d", ip, port), logPath: filepath.Join(logDir, fmt.Sprintf("instance-%d.log", i))}
		in.base = "http://" + in.addr
		in.args = append([]string{"serve",
			"--addr", in.addr,
			"--database-url", instURL,
			"--max-conns", fmt.Sprint(sc.maxConns),
			"--reap-interval", sc.reapInterval.String(),
			"--recheck-interval", "500ms",
			"--health-interval", "500ms",
			"--probe-timeout", sc.probeTimeout.String(),
			"--shutdown-timeout", "5s",
			"--log-level", "info",
		}, sc.extraArgs...)
		in.env = append(filteredEnv(), "DEVALLOC_ADMIN_KEY="+h.adminKey)
		if in.admin, err = client.NewClientWithResponses(in.base, client.WithHTTPClient(h.httpClient), client.WithBearerToken(h.adminKey)); err != nil {
			t.Fatal(err)
		}
		if in.client, err = client.NewClientWithResponses(in.base, client.WithHTTPClient(h.httpClient), client.WithBearerToken(h.clientKey)); err != nil {
			t.Fatal(err)
		}
		h.insts = append(h.insts, in)
	}
	// One after the other: instances migrate at start, and a scenario may
	// have set database-level timeouts that a migration lock wait would hit.
	for _, in := range h.insts {
		if err := in.start(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	h.began = time.Now()
	h.startMonitor()
	return h
}

// filteredEnv is the test's environment without the variables that would
// configure the instances behind the harness's back.
func filteredEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "DEVALLOC_") || strings.HasPrefix(kv, "DATABASE_URL=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// since is the time since the scenario's instances were up, for logs.
func (h *harness) since() string {
	return fmt.Sprintf("+%5.1fs", time.Since(h.began).Seconds())
}

// fault logs an injected fault.
func (h *harness) fault(format string, args ...any) {
	msg := h.since() + " " + fmt.Sprintf(format, args...)
	h.mu.Lock()
	h.faults = append(h.faults, msg)
	h.mu.Unlock()
	h.t.Log("fault: " + msg)
}

// note records an observation for the summary.
func (h *harness) note(format string, args ...any) {
	h.mu.Lock()
	h.notes = append(h.notes, fmt.Sprintf(format, args...))
	h.mu.Unlock()
}

// dbFault records a span in which the database was made unavailable.
func (h *harness) dbFault(from, to time.Time) {
	h.mu.Lock()
	h.dbFaults = append(h.dbFaults, window{from, to})
	h.mu.Unlock()
}

func (h *harness) inDBFault(t time.Time, margin time.Duration) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range h.dbFaults {
		if !t.Before(w.from.Add(-margin)) && !t.After(w.to.Add(margin)) {
			return true
		}
	}
	return false
}

// violate records a broken invariant.
func (h *harness) violate(format string, args ...any) {
	h.stats.violate(h.since() + " " + fmt.Sprintf(format, args...))
}

// pick is a random instance clients may use now; nil when none is up.
func (h *harness) pick(rng *rand.Rand) *instance {
	var up []*instance
	for _, in := range h.insts {
		if in.state.Load() == stateUp {
			up = append(up, in)
		}
	}
	if len(up) == 0 {
		return nil
	}
	return up[rng.IntN(len(up))]
}

// addDevice registers a device through the admin API.
func (h *harness) addDevice(name, pool, addr, probe string) {
	h.t.Helper()
	labels := map[string]string{"chaos": "yes"}
	p := client.CreateDeviceRequestProbe(probe)
	for _, in := range h.insts {
		if in.state.Load() != stateUp {
			continue
		}
		ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
		r, err := in.admin.CreateDeviceWithResponse(ctx, client.CreateDeviceRequest{Name: name, Pool: &pool, Address: addr, Probe: &p, Labels: &labels})
		cancel()
		if err != nil {
			h.t.Fatalf("register %s: %v", name, err)
		}
		if err := client.CheckResponse(r.HTTPResponse, r.Body); err != nil {
			h.t.Fatalf("register %s: %v", name, err)
		}
		h.mu.Lock()
		h.devices = append(h.devices, name)
		h.mu.Unlock()
		return
	}
	h.t.Fatal("no instance up to register devices on")
}

// addTCPDevices registers n loopback tcp devices name-1..name-n.
func (h *harness) addTCPDevices(prefix, pool string, n int) {
	h.t.Helper()
	for i := 1; i <= n; i++ {
		addr, err := h.farm.tcpDevice()
		if err != nil {
			h.t.Fatal(err)
		}
		h.addDevice(fmt.Sprintf("%s-%d", prefix, i), pool, addr, "tcp")
	}
}

// addSlowDevices registers n http devices that answer after delay, so
// acquire transactions stay open (probing under the row lock) that long.
func (h *harness) addSlowDevices(prefix, pool string, n int, delay time.Duration) {
	h.t.Helper()
	for i := 1; i <= n; i++ {
		addr, err := h.farm.slowDevice(delay)
		if err != nil {
			h.t.Fatal(err)
		}
		h.addDevice(fmt.Sprintf("%s-%d", prefix, i), pool, addr, "http")
	}
}

// startMonitor samples the database's connections every 250 ms.
func (h *harness) startMonitor() {
	h.monitorStop = make(chan struct{})
	h.monitorDone = make(chan struct{})
	go func() {
		defer close(h.monitorDone)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-h.monitorStop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(h.ctx, 2*time.Second)
			s, err := h.db.sampleConns(ctx)
			cancel()
			if err != nil {
				continue // the database may be down on purpose
			}
			h.recordConns(s)
			h.mu.Lock()
			onSample := h.onSample
			h.mu.Unlock()
			if onSample != nil {
				onSample(s)
			}
		}
	}()
}

func (h *harness) recordConns(s connSample) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w := &h.conns
	w.samples++
	if s.total > w.maxTotal {
		w.maxTotal, w.maxTotalAt = s.total, time.Since(h.began)
	}
	w.maxIdleInTx = max(w.maxIdleInTx, s.oldestIdleInTx)
	if s.total > h.sc.connBound() {
		w.overBound++
		if w.firstOver == "" {
			w.firstOver = fmt.Sprintf("%s %d connections (bound %d)", h.since(), s.total, h.sc.connBound())
		}
	}
	if s.oldestIdleInTx > h.sc.idleInTxBound {
		w.idleTooLong++
		if w.firstIdleLng == "" {
			w.firstIdleLng = fmt.Sprintf("%s a session idle in transaction for %v (%d such sessions)", h.since(), s.oldestIdleInTx.Round(100*time.Millisecond), s.idleInTx)
		}
	}
}

func (h *harness) stopMonitor() {
	if h.monitorStop == nil {
		return
	}
	select {
	case <-h.monitorStop:
	default:
		close(h.monitorStop)
	}
	<-h.monitorDone
}

// sleep waits d or until stop closes; false when stopped.
func sleep(d time.Duration, stop <-chan struct{}) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}

// stats counts outcomes per operation and keeps the violations.
type stats struct {
	mu          sync.Mutex
	counts      map[string]map[string]int
	violations  []string
	nViolations int
	// over: how long after its wait an acquire was answered (negative:
	// before), for acquires the harness did not disturb.
	over []time.Duration
	// grants per client id.
	grants map[int]int
	// slowestRelease is the longest a release took to be answered.
	slowestRelease time.Duration
}

func (s *stats) released(took time.Duration) {
	s.mu.Lock()
	s.slowestRelease = max(s.slowestRelease, took)
	s.mu.Unlock()
}

func newStats() *stats {
	return &stats{counts: map[string]map[string]int{}, grants: map[int]int{}}
}

func (s *stats) count(op, outcome string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.counts[op]
	if m == nil {
		m = map[string]int{}
		s.counts[op] = m
	}
	m[outcome]++
}

func (s *stats) get(op, outcome string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[op][outcome]
}

// total counts op's outcomes whose label starts with prefix.
func (s *stats) total(op, prefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, v := range s.counts[op] {
		if strings.HasPrefix(k, prefix) {
			n += v
		}
	}
	return n
}

const maxViolationsKept = 40

func (s *stats) violate(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nViolations++
	if len(s.violations) < maxViolationsKept {
		s.violations = append(s.violations, msg)
	}
}

func (s *stats) answered(over time.Duration) {
	s.mu.Lock()
	s.over = append(s.over, over)
	s.mu.Unlock()
}

func (s *stats) grantsOf(clientID int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.grants[clientID]
}

func (s *stats) granted(clientID int) {
	s.mu.Lock()
	s.grants[clientID]++
	s.mu.Unlock()
}

// summary renders the scenario's outcome.
func (h *harness) summary() string {
	var b strings.Builder
	s := h.stats
	s.mu.Lock()
	defer s.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	fmt.Fprintf(&b, "\n===== %s: %.1fs, %d instances, %d devices, db %s\n", h.name, time.Since(h.began).Seconds(), len(h.insts), len(h.devices), h.db.name)
	if len(h.faults) > 0 {
		b.WriteString("faults injected:\n")
		for _, f := range h.faults {
			b.WriteString("  " + f + "\n")
		}
	}
	b.WriteString("outcomes:\n")
	ops := make([]string, 0, len(s.counts))
	for op := range s.counts {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	for _, op := range ops {
		type kv struct {
			k string
			v int
		}
		var kvs []kv
		for k, v := range s.counts[op] {
			kvs = append(kvs, kv{k, v})
		}
		sort.Slice(kvs, func(i, j int) bool { return kvs[i].v > kvs[j].v || kvs[i].v == kvs[j].v && kvs[i].k < kvs[j].k })
		parts := make([]string, 0, len(kvs))
		for _, e := range kvs {
			parts = append(parts, fmt.Sprintf("%s: %d", e.k, e.v))
		}
		fmt.Fprintf(&b, "  %-9s %s\n", op, strings.Join(parts, ", "))
	}
	if n := len(s.over); n > 0 {
		o := slices.Clone(s.over)
		slices.Sort(o)
		fmt.Fprintf(&b, "acquire answered relative to its wait_seconds (n=%d): p50 %+.2fs, p99 %+.2fs, max %+.2fs (bound %+.2fs)\n",
			n, o[n/2].Seconds(), o[n*99/100].Seconds(), o[n-1].Seconds(), (answerSlack + h.sc.lateSlack).Seconds())
	}
	if s.slowestRelease > 0 {
		fmt.Fprintf(&b, "slowest release answered after %v\n", s.slowestRelease.Round(time.Millisecond))
	}
	fmt.Fprintf(&b, "connections: max %d (at +%.1fs) of bound %d over %d samples; oldest idle in transaction %v (bound %v)\n",
		h.conns.maxTotal, h.conns.maxTotalAt.Seconds(), h.sc.connBound(), h.conns.samples, h.conns.maxIdleInTx.Round(10*time.Millisecond), h.sc.idleInTxBound)
	fmt.Fprintf(&b, "ledger: %d grants seen by clients on %d devices; %d orphaned by vanished clients\n", h.led.len(), h.led.devices(), h.orphans.Load())
	for _, n := range h.notes {
		b.WriteString(n + "\n")
	}
	if s.nViolations == 0 {
		b.WriteString("violations: none\n")
	} else {
		fmt.Fprintf(&b, "VIOLATIONS (%d", s.nViolations)
		if s.nViolations > len(s.violations) {
			fmt.Fprintf(&b, ", first %d shown", len(s.violations))
		}
		b.WriteString("):\n")
		for _, v := range s.violations {
			b.WriteString("  " + v + "\n")
		}
	}
	return b.String()
}

// ledger is the clients' own record of who holds which device.
type ledger struct {
	mu      sync.Mutex
	byID    map[uuid.UUID]*grant
	current map[string]*grant // the latest grant per device
	n       int
}

type grant struct {
	id         uuid.UUID
	device     string
	token      int64
	acquiredAt time.Time
	expiresAt  time.Time
	holder     string
	client     int
	inst       int
	// letGo: its holder asked to release it (set before the request), at
	// letGoAt.
	letGo   bool
	letGoAt time.Time
	// abandoned: its holder stopped renewing and walked away.
	abandoned bool
}

func newLedger() *ledger {
	return &ledger{byID: map[uuid.UUID]*grant{}, current: map[string]*grant{}}
}

func (l *ledger) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

func (l *ledger) devices() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.current)
}

// record notes a 201 and checks it against the device's current holder:
// the previous grant must have been let go by its holder, or have expired
// (by the database clock, as the leases say) before this one began.
func (l *ledger) record(h *harness, lease *client.Lease, clientID, inst int) *grant {
	g := &grant{
		id: uuid.UUID(lease.ID), device: lease.Device.Name, token: lease.FencingToken,
		acquiredAt: lease.AcquiredAt, expiresAt: lease.ExpiresAt, holder: lease.Holder, client: clientID, inst: inst,
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if prev := l.byID[g.id]; prev != nil {
		h.violate("lease %s of %s handed out twice (to client %d and client %d)", g.id, g.device, prev.client, clientID)
		return prev
	}
	l.byID[g.id] = g
	l.n++
	prev := l.current[g.device]
	if prev != nil && !prev.letGo && g.acquiredAt.Before(prev.expiresAt) {
		h.violate("TWO HOLDERS: %s granted to client %d (lease %s, token %d, at %s) while client %d held it (lease %s, token %d, until %s, not released)",
			g.device, clientID, g.id, g.token, g.acquiredAt.Format(time.RFC3339Nano), prev.client, prev.id, prev.token, prev.expiresAt.Format(time.RFC3339Nano))
	}
	if prev == nil || g.token > prev.token {
		l.current[g.device] = g
	}
	return g
}

func (l *ledger) letGo(g *grant) {
	l.mu.Lock()
	if !g.letGo {
		g.letGoAt = time.Now()
	}
	g.letGo = true
	l.mu.Unlock()
}

func (l *ledger) abandon(g *grant) {
	l.mu.Lock()
	g.abandoned = true
	l.mu.Unlock()
}

func (l *ledger) renewed(g *grant, expires time.Time) {
	l.mu.Lock()
	if expires.After(g.expiresAt) {
		g.expiresAt = expires
	}
	l.mu.Unlock()
}

func (l *ledger) snapshot() map[uuid.UUID]grant {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[uuid.UUID]grant, len(l.byID))
	for id, g := range l.byID {
		out[id] = *g
	}
	return out
}
