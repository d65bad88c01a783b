package db

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/dbtest/pgcluster"
	"github.com/devalloc/devalloc/db/history"
	"github.com/devalloc/devalloc/db/migrate"
	"github.com/devalloc/devalloc/db/probe"
)

// TestHistoryLinearizable is the checker: three allocator instances (own
// pools, hubs and listeners) on one database, clients acquiring with and
// without waits, keys (retried, also at another instance, also twice at
// once), groups and priorities, renewing (also right at expiry), releasing,
// vanishing; faults meanwhile (every connection of the database
// terminated, a connection cut just after a statement went out, a DBA's
// table lock, devices failing their probes, one instance killed and
// replaced, PostgreSQL restarted fast or as a crash, on a private cluster).
// Every call and answer is recorded with its times and the history is
// checked, device by device, against the sequential model in db/history
// with porcupine; the database's own invariants are checked after the run.
//
// Seeds: DEVALLOC_HISTORY_SEED=n reruns one seed (the same schedule of
// choices; timing differs). Short mode (make test): 2 random seeds of
// DEVALLOC_HISTORY_DURATION (default 8 s) each; DEVALLOC_HISTORY_LONG=1
// (make verify): DEVALLOC_HISTORY_SEEDS (default 6) seeds of 45 s.
func TestHistoryLinearizable(t *testing.T) {
	long := os.Getenv("DEVALLOC_HISTORY_LONG") != ""
	duration, seeds := 8*time.Second, 2
	if long {
		duration, seeds = 45*time.Second, 6
	}
	if d, err := time.ParseDuration(os.Getenv("DEVALLOC_HISTORY_DURATION")); err == nil {
		duration = d
	}
	if n, err := strconv.Atoi(os.Getenv("DEVALLOC_HISTORY_SEEDS")); err == nil && n > 0 {
		seeds = n
	}
	var list []uint64
	if s, err := strconv.ParseUint(os.Getenv("DEVALLOC_HISTORY_SEED"), 10, 64); err == nil {
		list = []uint64{s}
	} else {
		base := uint64(time.Now().UnixNano()) % 1_000_000
		for i := range seeds {
			list = append(list, base+uint64(i))
		}
	}
	// A private cluster where PostgreSQL's programs are installed (CI, a
	// developer's machine with PostgreSQL), so the run can restart it;
	// otherwise the shared server, never restarted.
	var cluster *pgcluster.Cluster
	if pgcluster.Available() {
		cluster = pgcluster.Start(t)
	} else {
		t.Logf("no PostgreSQL programs in %s: histories run on the shared server, without restarts", pgcluster.BinDir())
	}
	for _, seed := range list {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			runHistory(t, cluster, seed, duration)
		})
	}
}

// histDatabase is a freshly migrated database for one run: on the private
// cluster when there is one, else on the shared server.
func histDatabase(t *testing.T, cluster *pgcluster.Cluster) string {
	t.Helper()
	if cluster == nil {
		return newDB(t)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	name := "hist_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	conn, err := pgx.Connect(ctx, cluster.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	url := strings.Replace(cluster.URL, "/postgres?", "/"+name+"?", 1)
	if err := migrate.Up(ctx, url, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("migrate %s: %v", name, err)
	}
	return url
}

// histConfig: a short TTL, and reaper, re-checker and health checker
// running often, so expiries, handoffs and probes happen all the time.
func histConfig(p probe.Prober) Config {
	cfg := testConfig(p)
	cfg.ReapInterval = 50 * time.Millisecond
	cfg.RecheckInterval = 250 * time.Millisecond
	cfg.HealthInterval = 150 * time.Millisecond
	cfg.HealthBackoffMin = 100 * time.Millisecond
	cfg.HealthBackoffMax = 300 * time.Millisecond
	cfg.HeartbeatInterval = time.Second
	cfg.ProbeOnHandoff = true
	cfg.ProbeTimeout = 500 * time.Millisecond
	cfg.DefaultTTL = time.Second
	cfg.StatementTimeout = 3 * time.Second
	cfg.LockTimeout = 2 * time.Second
	return cfg
}

// histInstance is one allocator with its own pool. kill is the in-process
// kill -9: its connections refuse to dial, every session it has is
// terminated (so its liveness lock goes), and the calls of its clients are
// cut off; it never deregisters.
type histInstance struct {
	name string
	a    *Allocator
	pool *pgxpool.Pool
	dead atomic.Bool
	// cutWrites: that many of its next writes lose their connection just
	// after going out (see cutMidStatement).
	cutWrites atomic.Int32
	alive     context.Context
	cutOff    context.CancelFunc
}

func startHistInstance(t *testing.T, url, name string, cfg Config) *histInstance {
	t.Helper()
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	h := &histInstance{name: name}
	pc.ConnConfig.RuntimeParams["application_name"] = name
	var dialer net.Dialer
	pc.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if h.dead.Load() {
			return nil, fmt.Errorf("%s was killed", name)
		}
		conn, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &cutConn{Conn: conn, cuts: &h.cutWrites}, nil
	}
	h.pool, err = pgxpool.NewWithConfig(t.Context(), pc)
	if err != nil {
		t.Fatal(err)
	}
	h.alive, h.cutOff = context.WithCancel(context.Background())
	h.a = New(h.pool, cfg)
	if err := h.a.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.cutOff()
		h.a.Stop()
		h.pool.Close()
	})
	waitFor(t, name+" ready", func() bool { return h.a.Ready(t.Context()) == nil })
	return h
}

// histRun is one seeded run.
type histRun struct {
	t      *testing.T
	url    string
	seed   uint64
	end    time.Time
	prober *fakeProber
	rec    history.Recorder
	// cluster is the private PostgreSQL the run restarts; nil on the
	// shared server, where the run does not restart it.
	cluster *pgcluster.Cluster

	mu        sync.Mutex
	instances []*histInstance
	killed    []*histInstance

	// told: every lease a client was told it holds, with its token.
	toldMu sync.Mutex
	told   map[string]told

	acquires, grants, noDevice, unknown, renews, releases, ended atomic.Int64
	faults                                                       sync.Map // kind → *atomic.Int64
	internal                                                     sync.Map // description → error
}

type told struct {
	device string
	token  int64
}

const (
	histDevices = 16
	histClients = 32
	histPool    = "farm"
)

func runHistory(t *testing.T, cluster *pgcluster.Cluster, seed uint64, duration time.Duration) {
	url := histDatabase(t, cluster)
	r := &histRun{t: t, url: url, seed: seed, prober: &fakeProber{}, told: map[string]told{}, cluster: cluster}
	cfg := histConfig(slowProber{r.prober})
	for i := range 3 {
		r.instances = append(r.instances, startHistInstance(t, url, fmt.Sprintf("hist-%d", i), cfg))
	}
	for i := range histDevices {
		kind := "none"
		if i >= histDevices-4 {
			kind = "tcp" // probed on acquire and on handoff; the fault schedule kills them now and then
		}
		mustCreateProbed(t, r.instances[0].a, fmt.Sprintf("d%d", i), histPool, fmt.Sprintf("h:%d", i), kind,
			Labels{"kind": []string{"a", "b"}[i%2]})
	}
	t.Logf("seed %d: %v, %d clients, %d devices, 3 instances (rerun: DEVALLOC_HISTORY_SEED=%d)", seed, duration, histClients, histDevices, seed)

	r.end = time.Now().Add(duration)
	var wg sync.WaitGroup
	for c := range histClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.client(c, rand.New(rand.NewPCG(seed, uint64(c)+1)))
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.injectFaults(rand.New(rand.NewPCG(seed, 0)), duration, cfg)
	}()
	wg.Wait()

	ops := r.rec.Operations()
	res := history.Check(ops, time.Minute)
	t.Logf("seed %d: %d operations on %d devices (%d acquires, %d leases told, %d no device, %d renews, %d releases, %d answered 410, %d unknown outcomes); faults: %s",
		seed, len(ops), res.Devices, r.acquires.Load(), r.grants.Load(), r.noDevice.Load(), r.renews.Load(), r.releases.Load(), r.ended.Load(), r.unknown.Load(), r.faultSummary())
	r.internal.Range(func(k, v any) bool {
		t.Errorf("seed %d: %s answered with an internal error (a 500): %v", seed, k, v)
		return true
	})
	switch res.Verdict {
	case porcupine.Illegal:
		for _, v := range res.Violations {
			t.Errorf("seed %d: history not linearizable:\n%s", seed, v)
		}
		t.Errorf("seed %d: visualization: %s; rerun: DEVALLOC_HISTORY_SEED=%d go test -race -run TestHistoryLinearizable ./db", seed, res.Visualization, seed)
	case porcupine.Unknown:
		t.Logf("seed %d: the check timed out on some device; no violation found within the time", seed)
	}
	if r.grants.Load() < 50 {
		t.Errorf("seed %d: only %d leases told: the farm barely moved", seed, r.grants.Load())
	}
	r.checkDatabase()
}

// ---- clients ----

// pick returns a live instance.
func (r *histRun) pick(rng *rand.Rand) *histInstance {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		h := r.instances[rng.IntN(len(r.instances))]
		if !h.dead.Load() {
			return h
		}
	}
}

func (r *histRun) client(c int, rng *rand.Rand) {
	for n := 0; time.Now().Before(r.end); n++ {
		req := AcquireRequest{
			Selector: Selector{Pool: histPool},
			TTL:      time.Second + time.Duration(rng.IntN(3))*250*time.Millisecond,
			Owner:    fmt.Sprintf("owner-%d", c%6),
			Holder:   fmt.Sprintf("c%d", c),
			Priority: rng.IntN(4),
		}
		switch rng.IntN(3) {
		case 1:
			req.Selector.Labels = Labels{"kind": "a"}
		case 2:
			req.Selector.Labels = Labels{"kind": "b"}
		}
		if rng.IntN(8) == 0 {
			req.Count = 2
		}
		if rng.IntN(5) != 0 {
			req.Wait = time.Duration(300+rng.IntN(1200)) * time.Millisecond
		}
		if rng.IntN(2) == 0 {
			req.IdempotencyKey = fmt.Sprintf("c%d-%d", c, n)
		}
		leases := r.acquire(c, rng, req)
		if len(leases) == 0 {
			sleepFor(time.Duration(rng.IntN(50)) * time.Millisecond)
			continue
		}
		r.hold(c, rng, leases)
	}
}

// acquire asks until it has an answer it can act on: a request with a key
// whose outcome is unknown (a cut connection, a killed instance, the client
// gave up) is retried with the same key, at any instance, as the CLI does;
// sometimes it is sent to two instances at once (a retry while the first
// still waits).
func (r *histRun) acquire(c int, rng *rand.Rand, req AcquireRequest) []Lease {
	for attempt := 0; ; attempt++ {
		h := r.pick(rng)
		ctx, cancel := context.WithCancel(h.alive)
		if rng.IntN(12) == 0 {
			// The client vanishes mid-call.
			stop := time.AfterFunc(time.Duration(rng.IntN(400))*time.Millisecond, cancel)
			defer stop.Stop()
		}
		twice := req.IdempotencyKey != "" && req.Wait > 0 && rng.IntN(5) == 0
		var second *histInstance
		if twice {
			second = r.pick(rng)
		}
		type answer struct {
			lease Lease
			err   error
		}
		answers := make([]answer, 2)
		var wg sync.WaitGroup
		for i, at := range []*histInstance{h, second} {
			if at == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				actx := ctx
				if i == 1 {
					var cancel2 context.CancelFunc
					actx, cancel2 = context.WithCancel(second.alive)
					defer cancel2()
				}
				answers[i].lease, answers[i].err = r.acquireOnce(c, at, actx, req, attempt)
			}()
		}
		wg.Wait()
		cancel()
		var got []Lease
		unknown := false
		for _, a := range answers {
			switch {
			case a.err == nil && a.lease.ID != uuid.Nil:
				if got != nil && !sameAnswer(got, a.lease) {
					r.internal.Store(fmt.Sprintf("key %s at two instances", req.IdempotencyKey),
						fmt.Errorf("two different leases %s and %s for one key", got[0].ID, a.lease.ID))
				}
				if got == nil && a.lease.Active() {
					got = leasesOf(a.lease)
				}
			case a.err != nil && !errors.Is(a.err, ErrNoDevice):
				unknown = true
			}
		}
		if got != nil {
			return got
		}
		if !unknown || req.IdempotencyKey == "" || attempt >= 2 || rng.IntN(3) == 0 || time.Now().After(r.end) {
			return nil
		}
		sleepFor(time.Duration(rng.IntN(100)) * time.Millisecond)
	}
}

// sameAnswer: the lease (or one of the group's) is among got.
func sameAnswer(got []Lease, l Lease) bool {
	for _, g := range got {
		if g.ID == l.ID {
			return true
		}
	}
	return false
}

func leasesOf(l Lease) []Lease {
	if len(l.Group) > 0 {
		return l.Group
	}
	return []Lease{l}
}

// acquireOnce is one recorded acquire call.
func (r *histRun) acquireOnce(c int, h *histInstance, ctx context.Context, req AcquireRequest, attempt int) (Lease, error) {
	r.acquires.Add(1)
	call := history.Now()
	lease, replayed, err := h.a.AcquireOrReplay(ctx, req)
	ret := history.Now()
	note := fmt.Sprintf("%s wait=%v count=%d key=%q try=%d", h.name, req.Wait, max(req.Count, 1), req.IdempotencyKey, attempt)
	if err != nil {
		switch {
		case errors.Is(err, ErrNoDevice):
			r.noDevice.Add(1)
		default:
			r.classify(ctx, "acquire "+note, err)
		}
		return Lease{}, err
	}
	r.grants.Add(1)
	for _, l := range leasesOf(lease) {
		r.rec.Add(history.Input{Kind: history.Acquire, Client: c, Device: l.Device.Name, Call: call, Return: ret, Note: note},
			history.Output{Outcome: history.OK, Lease: leaseInfo(l), Replayed: replayed})
		if l.Active() {
			r.toldMu.Lock()
			r.told[l.ID.String()] = told{device: l.Device.Name, token: l.FencingToken}
			r.toldMu.Unlock()
		}
	}
	return lease, nil
}

func leaseInfo(l Lease) history.LeaseInfo {
	return history.LeaseInfo{
		ID: l.ID.String(), Token: l.FencingToken,
		AcquiredAt: l.AcquiredAt.UnixMicro(), ExpiresAt: l.ExpiresAt.UnixMicro(),
		Ended: l.ReleasedAt != nil,
	}
}

// classify counts an error whose outcome is unknown; one that is neither
// the database's transient trouble nor the client's going away would be a
// 500 over HTTP, which the promise never allows.
func (r *histRun) classify(ctx context.Context, what string, err error) {
	r.unknown.Add(1)
	if ctx.Err() != nil || IsTransient(err) || errors.Is(err, ErrShuttingDown) || errors.Is(err, context.Canceled) {
		return
	}
	r.internal.Store(what, err)
}

// hold does what a holder does with its leases: release soon, renew a few
// times, renew right at expiry (racing the reaper), vanish, or overstay.
func (r *histRun) hold(c int, rng *rand.Rand, leases []Lease) {
	switch b := rng.IntN(20); {
	case b < 5:
		sleepFor(time.Duration(rng.IntN(200)) * time.Millisecond)
		r.releaseAll(c, rng, leases)
	case b < 8:
		for range 1 + rng.IntN(3) {
			sleepFor(time.Until(leases[0].ExpiresAt) / 3)
			if !r.renewAll(c, rng, leases) {
				return
			}
		}
		r.releaseAll(c, rng, leases)
	case b < 16:
		// Late renews: right at expiry, while the reaper looks for due
		// leases; then the lease is used again at once, which shows
		// whether the 200 held.
		for range 1 + rng.IntN(2) {
			early := time.Duration(rng.IntN(45)-5) * time.Millisecond
			sleepFor(time.Until(leases[0].ExpiresAt) - early)
			if !r.renewAll(c, rng, leases) {
				return
			}
		}
		sleepFor(time.Duration(rng.IntN(50)) * time.Millisecond)
		r.releaseAll(c, rng, leases)
	case b < 18:
		// Vanish: the reaper takes it back.
	default:
		// Overstay: release after expiry (a 410).
		sleepFor(time.Until(leases[0].ExpiresAt) + time.Duration(rng.IntN(100))*time.Millisecond)
		r.releaseAll(c, rng, leases)
	}
}

// renewAll renews every lease; false when one is gone (or unknown).
func (r *histRun) renewAll(c int, rng *rand.Rand, leases []Lease) bool {
	ok := true
	for i, l := range leases {
		h := r.pick(rng)
		ttl := time.Second + time.Duration(rng.IntN(3))*250*time.Millisecond
		r.renews.Add(1)
		call := history.Now()
		renewed, err := h.a.Renew(h.alive, l.ID, ttl)
		ret := history.Now()
		in := history.Input{Kind: history.Renew, Client: c, Device: l.Device.Name, Lease: l.ID.String(),
			TTL: ttl.Microseconds(), Call: call, Return: ret, Note: h.name}
		out := r.outcome(h, "renew", err)
		if err == nil {
			out.Lease = leaseInfo(renewed)
			leases[i].ExpiresAt = renewed.ExpiresAt
		} else {
			ok = false
		}
		r.rec.Add(in, out)
	}
	return ok
}

func (r *histRun) releaseAll(c int, rng *rand.Rand, leases []Lease) {
	for _, l := range leases {
		for try := 0; try < 2; try++ {
			h := r.pick(rng)
			r.releases.Add(1)
			call := history.Now()
			err := releaseAsHTTPDoes(h, l)
			ret := history.Now()
			out := r.outcome(h, "release", err)
			r.rec.Add(history.Input{Kind: history.Release, Client: c, Device: l.Device.Name, Lease: l.ID.String(),
				Call: call, Return: ret, Note: h.name}, out)
			if out.Outcome != history.Unknown {
				break
			}
		}
	}
}

// releaseAsHTTPDoes is DELETE /v1/leases/{id} by its owner: ReleaseOwn,
// then Release to tell an ended lease from an unknown one.
func releaseAsHTTPDoes(h *histInstance, l Lease) error {
	done, err := h.a.ReleaseOwn(h.alive, l.ID, l.Owner)
	if err != nil || done {
		return err
	}
	_, err = h.a.Release(h.alive, l.ID)
	return err
}

func (r *histRun) outcome(h *histInstance, op string, err error) history.Output {
	var ended *LeaseEndedError
	switch {
	case err == nil:
		return history.Output{Outcome: history.OK}
	case errors.As(err, &ended):
		r.ended.Add(1)
		return history.Output{Outcome: history.Ended, Err: ended.Lease.EndReason}
	default:
		r.classify(h.alive, op+" at "+h.name, err)
		return history.Output{Outcome: history.Unknown, Err: err.Error()}
	}
}

func sleepFor(d time.Duration) {
	if d > 0 {
		time.Sleep(d)
	}
}

// ---- the database's own invariants ----

// checkDatabase waits for every lease to end and every device to come back
// (no device is lost), then checks the history the database kept: one
// active lease per device at most, leased iff an active lease, fencing
// tokens growing, no two leases of a device overlapping, no lease ended as
// expired before its expires_at, and every lease a client was told of there
// with its token.
func (r *histRun) checkDatabase() {
	t := r.t
	conn, err := pgx.Connect(t.Context(), r.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	count := func(sql string) int {
		var n int
		if err := conn.QueryRow(t.Context(), sql).Scan(&n); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return n
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		active := count(`SELECT count(*) FROM devalloc.leases WHERE released_at IS NULL`)
		idle := count(`SELECT count(*) FROM devalloc.devices WHERE state = 'idle' AND lease_id IS NULL`)
		// Every request has been answered: a row still in line is one
		// nobody waits on, which would be handed devices nobody collects.
		waiting := count(`SELECT count(*) FROM devalloc.waiters`)
		if active == 0 && idle == histDevices && waiting == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("seed %d: devices lost: %d active leases, %d of %d devices idle, %d rows left in line 20 s after the run",
				r.seed, active, idle, histDevices, waiting)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	checks := []struct{ what, sql string }{
		{"devices with two active leases", `SELECT count(*) FROM (SELECT device_id FROM devalloc.leases
			WHERE released_at IS NULL GROUP BY device_id HAVING count(*) > 1) s`},
		{"devices leased without their active lease, or idle with one", `SELECT count(*) FROM devalloc.devices d
			WHERE (d.state = 'leased') IS DISTINCT FROM EXISTS (SELECT 1 FROM devalloc.leases l
				WHERE l.id = d.lease_id AND l.released_at IS NULL)`},
		{"leases whose fencing token did not grow", `SELECT count(*) FROM (SELECT fencing_token,
			lag(fencing_token) OVER (PARTITION BY device_id ORDER BY acquired_at, fencing_token) AS prev
			FROM devalloc.leases) s WHERE prev >= fencing_token`},
		{"leases overlapping the previous lease of their device", `SELECT count(*) FROM (SELECT acquired_at,
			lag(coalesce(released_at, 'infinity')) OVER (PARTITION BY device_id ORDER BY acquired_at, fencing_token) AS prev_end
			FROM devalloc.leases) s WHERE prev_end > acquired_at`},
		{"leases ended as expired before their expires_at", `SELECT count(*) FROM devalloc.leases
			WHERE end_reason = 'expired' AND released_at < expires_at`},
	}
	for _, c := range checks {
		if n := count(c.sql); n != 0 {
			t.Errorf("seed %d: database: %d %s", r.seed, n, c.what)
		}
	}
	rows, err := conn.Query(t.Context(), `SELECT id::text, device_name, fencing_token FROM devalloc.leases`)
	if err != nil {
		t.Fatal(err)
	}
	inDB := map[string]told{}
	for rows.Next() {
		var id string
		var tl told
		if err := rows.Scan(&id, &tl.device, &tl.token); err != nil {
			t.Fatal(err)
		}
		inDB[id] = tl
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for id, tl := range r.told {
		if got, ok := inDB[id]; !ok || got != tl {
			t.Errorf("seed %d: lease %s told as %v is %v in the database", r.seed, id, tl, got)
		}
	}
	// Leases no client was told of: answers lost on a cut connection, keyed
	// leases kept for a retry that never came, handoffs given back. Not a
	// violation (the TTL ends them), but what the farm paid in device time.
	untold := map[string]int{}
	rows, err = conn.Query(t.Context(), `SELECT id::text, coalesce(end_reason, 'active') FROM devalloc.leases`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, reason string
		if err := rows.Scan(&id, &reason); err != nil {
			t.Fatal(err)
		}
		if _, ok := r.told[id]; !ok {
			untold[reason]++
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("seed %d: leases no client was told of, by how they ended: %v", r.seed, untold)
	// How the leases ended, for the log: released, expired, probe_failed, ...
	var summary string
	_ = conn.QueryRow(t.Context(), `SELECT count(*) || ' leases in history; ended: ' || coalesce((SELECT string_agg(n || ' ' || r, ', ' ORDER BY r)
		FROM (SELECT coalesce(end_reason, 'active') AS r, count(*) AS n FROM devalloc.leases GROUP BY 1) s), '') FROM devalloc.leases`).Scan(&summary)
	t.Logf("seed %d: database: %s", r.seed, summary)
}
