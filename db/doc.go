// Package db is everything of devalloc that talks to PostgreSQL: the
// allocator's transactions, the waiter hub fed by LISTEN/NOTIFY, the reaper
// and the health checker. The SQL itself lives in queries/ and is compiled
// by sqlc into db/internal/dbsqlc; db/schema.sql is the schema it runs on.
//
// # Where things are
//
//   - The types callers see: types.go (devices, leases, labels, selectors,
//     states), errors.go (what httpapi maps to answers), config.go,
//     observer.go (metrics hooks). Rows become these types in convert.go.
//   - An acquire: acquire.go (the request and its four steps, in order),
//     attempt.go and attempt_unprobed.go (step 1: a device at once, by
//     one statement or by the probing transaction), probe.go (probing a
//     device), satisfiable.go (step 2), replay.go (step 3 and every other
//     answer with a key's lease: replays, take-backs of unsettled
//     handoffs), flight.go and idempotency.go (one request per key),
//     saferetry.go and transient.go (which failures are retried or 503).
//   - The line: queue.go (join, wait, leave, dispatch), handoff.go
//     (collect what was handed: probe, confirm, answer), queue_list.go
//     (listing it), groups.go (multi-device acquires), busy.go (which
//     lines to join without an attempt), stranded.go (rows left behind by
//     a failed leave or collect).
//   - Holding and ending: leases.go (read, renew, release, revoke),
//     endlease.go (the one EndLease call every ending goes through, what it
//     tells afterwards, and the give-back of leases nobody will hold),
//     devices.go (the registry).
//   - Wake-ups: package db/wake (this instance's waiters, its LISTEN
//     connection, NOTIFY after commit, the served notice: who is told what
//     and when); instance.go (this instance's row, heartbeat and liveness).
//   - Background services, each a loop the Allocator starts: reaper.go
//     (expiry, with reap_cooldown.go), recheck.go (lost wake-ups and the
//     stranded), health.go (offline devices), pruner.go (history).
//
// # Words
//
// The line is devalloc.waiters, the requests waiting in a pool in serving
// order; a waiter is one of them (a row, and its Waiter in this instance's
// hub). Dispatch is the SQL that serves the line from idle devices
// (devalloc.dispatch, Allocator.dispatch); a wake is the hub telling a local
// waiter to look (Hub.Notify), after which the waiter runs a dispatch. A
// handoff is a device given to a waiter by someone else's transaction;
// under ProbeOnHandoff it is pending until the waiter's probe confirms it.
// A group is an acquire of several devices at once (leases sharing a
// group_id), never the hub's per-selector queues.
//
// The domain types are defined in db/devalloctype; the background loops'
// period is spread by db/internal/jitter.
package db
