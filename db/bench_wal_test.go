package db

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/probe"
)

// BenchmarkCycleWAL runs acquire-and-release cycles on a pool of labelled
// devices that need no probe and reports what each cycle writes: WAL bytes
// and the share of device and lease updates that were HOT (heap-only: no
// index touched). Issue 14 asks for these numbers before and after a change
// of the data layout; time per cycle is reported as usual.
//
//	go test ./db -run '^$' -bench CycleWAL -benchtime 2000x
//
// WAL is measured on the whole server: run it on a quiet one.
func BenchmarkCycleWAL(b *testing.B) {
	for _, devices := range []int{100, 10000} {
		b.Run(fmt.Sprintf("devices=%d", devices), func(b *testing.B) {
			a := newAllocator(b, newDB(b), testConfig(&probe.Network{}))
			if _, err := a.pool.Exec(b.Context(), `INSERT INTO devalloc.devices (name, pool, labels, address, probe)
				SELECT 'd' || g, 'lab', jsonb_build_object('model', 'm' || (g % 10), 'os', '14'), 'h:' || g, 'none'
				FROM generate_series(1, $1) g`, devices); err != nil {
				b.Fatal(err)
			}
			if _, err := a.pool.Exec(b.Context(), `ANALYZE devalloc.devices`); err != nil {
				b.Fatal(err)
			}
			sel := Selector{Pool: "lab", Labels: Labels{"model": "m3"}}
			inspect := walInspect(b, a.pool)
			before := walStats(b, a.pool)
			for b.Loop() {
				l, err := a.Acquire(b.Context(), AcquireRequest{Selector: sel, Owner: "bench"})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := a.Release(b.Context(), l.ID); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			after := walStats(b, a.pool)
			n := float64(b.N)
			b.ReportMetric(float64(after.wal-before.wal)/n, "WAL-B/cycle")
			b.ReportMetric(hotShare(after.devUpd-before.devUpd, after.devHot-before.devHot), "devices-HOT-%")
			b.ReportMetric(hotShare(after.leaseUpd-before.leaseUpd, after.leaseHot-before.leaseHot), "leases-HOT-%")
			if inspect {
				for rmgr, bytes := range walByKind(b, a.pool, before.lsn, after.lsn) {
					b.ReportMetric(float64(bytes)/n, rmgr+"-WAL-B/cycle")
				}
			}
		})
	}
}

// cycleStats is the server's WAL position and the update counters of the
// two tables a cycle changes.
type cycleStats struct {
	wal                                int64
	lsn                                string
	devUpd, devHot, leaseUpd, leaseHot int64
}

func walStats(b *testing.B, pool *pgxpool.Pool) cycleStats {
	b.Helper()
	// Statistics reach the shared counters when a backend is idle (at most
	// a second later): wait that out rather than read half of them.
	time.Sleep(1500 * time.Millisecond)
	ctx, cancel := context.WithTimeout(b.Context(), 10*time.Second)
	defer cancel()
	var s cycleStats
	if err := pool.QueryRow(ctx, `
		SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, pg_current_wal_lsn()::text,
		       (SELECT n_tup_upd FROM pg_stat_user_tables WHERE schemaname = 'devalloc' AND relname = 'devices'),
		       (SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE schemaname = 'devalloc' AND relname = 'devices'),
		       (SELECT n_tup_upd FROM pg_stat_user_tables WHERE schemaname = 'devalloc' AND relname = 'leases'),
		       (SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE schemaname = 'devalloc' AND relname = 'leases')`).
		Scan(&s.wal, &s.lsn, &s.devUpd, &s.devHot, &s.leaseUpd, &s.leaseHot); err != nil {
		b.Fatal(err)
	}
	return s
}

func hotShare(updates, hot int64) float64 {
	if updates == 0 {
		return 0
	}
	return 100 * float64(hot) / float64(updates)
}

// walInspect makes pg_walinspect available in the benchmark's database, to
// tell the WAL of a cycle apart by kind (heap, B-tree, GIN, commit), and
// keeps the server from recycling the WAL it will read: a temporary
// replication slot, held on a connection of its own until the benchmark
// ends, so a benchmark killed midway leaves no slot holding WAL back. It
// needs a superuser and PostgreSQL 15; without them the split is left out.
func walInspect(b *testing.B, pool *pgxpool.Pool) bool {
	_, err := pool.Exec(b.Context(), `CREATE EXTENSION IF NOT EXISTS pg_walinspect`)
	if err != nil {
		b.Logf("no WAL split by kind: %v", err)
		return false
	}
	conn, err := pool.Acquire(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	slot := fmt.Sprintf("devalloc_bench_wal_%d", time.Now().UnixNano())
	if _, err := conn.Exec(b.Context(), `SELECT pg_create_physical_replication_slot($1, true, true)`, slot); err != nil {
		conn.Release()
		b.Logf("no WAL split by kind: %v", err)
		return false
	}
	b.Cleanup(func() {
		// Closing the session drops the temporary slot.
		_ = conn.Conn().Close(context.Background())
		conn.Release()
	})
	return true
}

// walByKind is the WAL between two positions by resource manager (Heap,
// Heap2, Btree, Gin, Transaction, ...), in bytes, records and full-page
// images together.
func walByKind(b *testing.B, pool *pgxpool.Pool, from, to string) map[string]int64 {
	b.Helper()
	rows, err := pool.Query(b.Context(), `
		SELECT "resource_manager/record_type", combined_size
		FROM pg_get_wal_stats($1::pg_lsn, $2::pg_lsn) WHERE count > 0`, from, to)
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]int64{}
	for rows.Next() {
		var kind string
		var bytes int64
		if err := rows.Scan(&kind, &bytes); err != nil {
			b.Fatal(err)
		}
		out[kind] = bytes
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	return out
}
