package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// monitorAppName is the application_name of the bench's own statistics
// connection.
const monitorAppName = "devalloc-bench-monitor"

// dbMonitor reads PostgreSQL's statistics about the database the
// instances use. It connects to the server's maintenance database
// ("postgres") when it can: its own polling then adds nothing to the
// transaction counts it reads, and never shows up among the connections it
// counts. The statistics views are cluster-wide, so the target database is
// named in each query.
type dbMonitor struct {
	datname string

	mu   sync.Mutex // one query at a time on conn
	conn *pgx.Conn
}

// openMonitor connects with db's settings, to "postgres" if possible and
// else to db's own database.
func openMonitor(ctx context.Context, db *pgxpool.Pool) (*dbMonitor, error) {
	cfg := db.Config().ConnConfig.Copy()
	m := &dbMonitor{datname: cfg.Database}
	cfg.RuntimeParams["application_name"] = monitorAppName
	maint := cfg.Copy()
	maint.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, maint)
	if err != nil {
		if conn, err = pgx.ConnectConfig(ctx, cfg); err != nil {
			return nil, fmt.Errorf("open database monitor: %w", err)
		}
	}
	m.conn = conn
	return m, nil
}

// close ends the monitor's connection.
func (m *dbMonitor) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = m.conn.Close(ctx)
}

// xacts is the database's committed and rolled-back transactions so far.
// PostgreSQL (15+) publishes a backend's counts at most about once a
// second while it is busy and up to ten seconds late once it goes idle,
// so only differences over steady windows of several seconds mean much.
func (m *dbMonitor) xacts(ctx context.Context) (commits, rollbacks int64, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	err = m.conn.QueryRow(ctx,
		`SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1`,
		m.datname).Scan(&commits, &rollbacks)
	if err != nil {
		return 0, 0, fmt.Errorf("read pg_stat_database: %w", err)
	}
	return commits, rollbacks, nil
}

// xids is the next transaction id the database will assign: differences
// count the transactions that wrote something (read-only ones take no
// id), exactly and at once, unlike the statistics xacts reads.
func (m *dbMonitor) xids(ctx context.Context) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var next int64
	if err := m.conn.QueryRow(ctx, `SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint`).Scan(&next); err != nil {
		return 0, fmt.Errorf("read the next transaction id: %w", err)
	}
	return next, nil
}

// conns counts the client connections to the database by
// application_name. With names, only those names count (the spawned
// instances); with none, every connection but the monitor's own counts,
// under "".
func (m *dbMonitor) conns(ctx context.Context, names []string) (map[string]int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	const q = `SELECT CASE WHEN cardinality($2::text[]) = 0 THEN '' ELSE application_name END, count(*)
		FROM pg_stat_activity
		WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()
		  AND (cardinality($2::text[]) = 0 OR application_name = ANY($2::text[]))
		GROUP BY 1`
	if names == nil {
		names = []string{}
	}
	rows, err := m.conn.Query(ctx, q, m.datname, names)
	if err != nil {
		return nil, fmt.Errorf("read pg_stat_activity: %w", err)
	}
	out := map[string]int{}
	var (
		name string
		n    int
	)
	_, err = pgx.ForEachRow(rows, []any{&name, &n}, func() error {
		out[name] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read pg_stat_activity: %w", err)
	}
	return out, nil
}

// connSampleEvery is how often connections are counted: often enough to
// catch a pool at its peak, rarely enough to cost nothing.
const connSampleEvery = 200 * time.Millisecond

// connSampler counts connections every connSampleEvery until stopped and
// keeps the peaks: of the total, and of each name.
type connSampler struct {
	quit chan struct{}
	done chan struct{}

	// Written by the sampling goroutine, read after done closes.
	maxTotal int
	maxEach  map[string]int
	err      error
}

// startConnSampler starts counting connections of names (see conns). Stop
// does not cancel a count in flight, since a cancelled query costs the
// monitor its connection; ctx ends the sampling only when the scenario is
// abandoned.
func startConnSampler(ctx context.Context, m *dbMonitor, names []string) *connSampler {
	s := &connSampler{quit: make(chan struct{}), done: make(chan struct{}), maxEach: map[string]int{}}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(connSampleEvery)
		defer tick.Stop()
		for {
			byName, err := m.conns(ctx, names)
			if err != nil {
				if ctx.Err() == nil {
					s.err = err
				}
				return
			}
			total := 0
			for name, n := range byName {
				total += n
				s.maxEach[name] = max(s.maxEach[name], n)
			}
			s.maxTotal = max(s.maxTotal, total)
			select {
			case <-ctx.Done():
				return
			case <-s.quit:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the peaks: of all the connections
// counted at once, and of each name's.
func (s *connSampler) stop() (maxTotal int, maxEach map[string]int, err error) {
	select {
	case <-s.quit:
	default:
		close(s.quit)
	}
	<-s.done
	return s.maxTotal, s.maxEach, s.err
}
