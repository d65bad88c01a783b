// Package wake is how one devalloc instance learns that something it waits
// for happened: who is told what, when, and through which channel. It holds
// no state of its own beyond this instance's waiters; the line itself is a
// table (devalloc.waiters) and every decision is a transaction in package db.
//
// Two kinds of news reach a waiting acquire:
//
//   - Idle hints: a device became idle. A release, expiry or give-back made
//     by this instance wakes its own waiters at once (Notifier.Freed) and
//     tells the others after commit, batched, on IdleChannel
//     (Notifier.Run); a change made by anyone else (a DBA's UPDATE, another
//     statement without devalloc.notify_by_caller) is announced by the
//     devices triggers on the same channel (migrations/00002, 00007). The
//     Listener turns both into IdleEvents for the Hub, which wakes the
//     oldest matching waiter not already woken. A hint promises nothing:
//     the woken waiter runs the pool's dispatch and may find nothing.
//   - Served notices: a transaction handed this waiter its devices (a
//     release's direct handoff in queries/leases.sql EndLease, or
//     devalloc.grant_to_waiter from a dispatch) and tells the waiter's
//     instance at commit on its own ServedChannel, both through
//     devalloc.notify_served (migrations/00022): with the leases, or with
//     the waiter's id alone when they would not fit a payload (then the
//     waiter reads them). devalloc.tell_twins sends the same notice without
//     leases to a keyed waiter whose key got a lease elsewhere. A handoff
//     this instance's own statement made is delivered directly
//     (Notifier.HandedOver).
//
// Notifications are lost when the listener's connection drops, so every
// (re)connect asks for a full re-check, and the re-checker in package db
// covers lost hints and lost served notices on its passes. Payloads stay
// under PostgreSQL's 8000-byte limit (MaxPayload here; the SQL senders cut
// at devalloc.notify_payload_limit(), the same number).
package wake
