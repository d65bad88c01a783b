// Package rawsql measures allocator designs in bare SQL on a given
// PostgreSQL, with no HTTP and no devalloc code in the way:
//
//   - Floor is the Go twin of shared/bench/raw-ceiling: the acquire+release
//     cycle rate an HTTP allocator is compared with.
//   - Baselines runs naive designs (and devalloc's SKIP LOCKED one) side by
//     side and counts the double allocations each makes.
//   - Notify measures three ways of sending NOTIFY on release: its cost in
//     cycles and how soon a listener hears of the release.
//
// Every measurement works in a schema of its own, created fresh (as
// shared/bench/raw-schema.sql does) and dropped at the end, and gives each
// client its own connection rather than a pool, as pgbench does, so the
// figures compare with pgbench's. Only cycles finished within the run time
// count, as with pgbench -T.
package rawsql
