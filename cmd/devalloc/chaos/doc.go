// Package chaos is devalloc's fault harness: Go tests, behind the build tag
// "chaos", that run several real "devalloc serve" processes against one
// PostgreSQL database, drive them over HTTP with concurrent clients through
// the generated SDK, inject faults (kill -9, pg_terminate_backend, a
// PostgreSQL restart, vanishing clients, hanging and flapping devices,
// statement and lock timeouts, a frozen instance, a graceful shutdown with
// waiters) and check the invariants after every scenario: no device ever had
// two holders (a client-side ledger checked against the database's lease
// history), every device's state agrees with its leases, every acquire got a
// device or a clean problem+json error within its wait plus a second,
// connections went back to their pools, and the harness leaked no goroutine.
//
//	make chaos    # the scenarios (TestChaos*), a few minutes; CI runs it
//	make soak     # TestSoak: steady load with periodic faults, RSS and
//	              # connection samples (DEVALLOC_SOAK_DURATION, default 5m)
//
// The scenarios use the PostgreSQL of TEST_DATABASE_URL (else
// 127.0.0.1:5432 as user postgres), one fresh database each, except the
// PostgreSQL restart, which runs a private cluster (initdb/pg_ctl from
// DEVALLOC_PG_BIN, default /usr/lib/postgresql/15/bin, as user postgres when
// run as root) on a spare port, so the shared server is never disturbed;
// and the failover (TestChaosFailover), which runs two: a primary and a
// synchronous standby made with pg_basebackup -R, the instances reaching
// them through a multi-host URL with target_session_attrs=read-write.
// TestFailoverAsync and TestFailoverSyncStalled (run by name, not in make
// chaos) measure what asynchronous replication and a stalled synchronous
// standby lose.
package chaos
