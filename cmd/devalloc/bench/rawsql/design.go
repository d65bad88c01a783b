package rawsql

// design is how an allocator acquires a device: every statement of the
// acquire transaction that differs between designs. All designs release the
// same way (queries.release).
type design struct {
	name string
	// schema is where the design runs; each design gets its own, so one
	// design's dead tuples do not slow the next.
	schema string
	// lockPool takes pg_advisory_xact_lock on the pool's hash before the
	// pick, which serialises every acquire of the pool.
	lockPool bool
	// lockClause follows the pick's ORDER BY id LIMIT 1.
	lockClause string
	// guarded adds AND state = 'idle' to the UPDATE that marks the device
	// leased, and treats an UPDATE that matched no row as a retry.
	guarded bool
}

// designs are the baselines, in the order they are reported.
var designs = []design{
	// The classic bug: nothing stops two clients from picking the same
	// idle row before either has marked it leased, and the unguarded
	// UPDATE lets the second one through too (it waits for the first one's
	// row lock, then updates the row all the same). It runs in a
	// transaction like every design, which does not help.
	{name: "select-then-update", schema: "rawnaive"},
	// Correct, but every client queues on the same first idle row. Under
	// READ COMMITTED a queued client re-checks the row once it gets the
	// lock and drops it if it is no longer idle. PostgreSQL then locks the
	// next idle row of the pick's snapshot (LockRows sits under the
	// Limit), so the pick comes back empty, a retry, only when that
	// snapshot's idle rows have all been taken: rare unless devices are
	// few.
	{name: "for-update", schema: "rawforupdate", lockClause: " FOR UPDATE"},
	// Correct, but one acquire at a time per pool. The lock is taken in
	// its own statement, so the pick's snapshot, taken after it, sees every
	// earlier acquire's commit.
	{name: "advisory-lock", schema: "rawadvisory", lockPool: true},
	// devalloc's design: each client skips rows another acquire has
	// locked, and the guarded UPDATE is its belt and braces.
	skipLocked,
}

// skipLocked is devalloc's acquire, also used by Notify.
var skipLocked = design{name: "skip-locked", schema: "rawskiplocked", lockClause: " FOR UPDATE SKIP LOCKED", guarded: true}

// notifyDesign is devalloc's acquire in Notify's schema.
var notifyDesign = design{name: skipLocked.name, schema: "rawnotify", lockClause: skipLocked.lockClause, guarded: skipLocked.guarded}

// floorDesign is raw-cycle.sql's acquire: SKIP LOCKED without a guard.
var floorDesign = design{name: "floor", schema: "rawbench", lockClause: " FOR UPDATE SKIP LOCKED"}
