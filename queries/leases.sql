-- Leases: reads, renew, release, expiry.

-- name: GetLease :one
SELECT * FROM devalloc.leases WHERE id = @id;

-- name: GetLeaseByIdempotencyKey :one
-- The lease an owner's earlier acquire with this Idempotency-Key got, if any.
SELECT * FROM devalloc.leases
WHERE owner = @owner AND idempotency_key = @idempotency_key::text;

-- name: ListLeases :many
-- One page of leases, newest first, after the previous page's last
-- (acquired_at, id) when given: keyset pagination on the leases_*acquired
-- indexes, never OFFSET. The row comparison matches the ORDER BY, so every
-- lease is listed once even when several share an acquired_at. The first
-- page starts below (infinity, max uuid), so the cursor condition is an
-- index bound even in a generic plan of the prepared statement. The device's
-- labels and address come along (NULL once it was deleted): one query per
-- page, not one per lease.
SELECT sqlc.embed(l), d.labels AS device_labels, d.address AS device_address
FROM devalloc.leases l
LEFT JOIN devalloc.devices d ON d.id = l.device_id
WHERE (NOT @active_only::boolean OR l.released_at IS NULL)
  AND (sqlc.narg('pool')::text IS NULL OR l.pool = sqlc.narg('pool'))
  AND (sqlc.narg('owner')::text IS NULL OR l.owner = sqlc.narg('owner'))
  AND (l.acquired_at, l.id) < (coalesce(sqlc.narg('after_acquired_at')::timestamptz, 'infinity'),
                               coalesce(sqlc.narg('after_id')::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
ORDER BY l.acquired_at DESC, l.id DESC
LIMIT @max_rows;

-- name: RenewLease :one
-- Extends an active lease that has not lapsed yet (database clock).
UPDATE devalloc.leases SET expires_at = clock_timestamp() + make_interval(secs => @ttl_seconds::float8)
WHERE id = @id AND released_at IS NULL AND expires_at > now()
RETURNING *;

-- name: EndLease :one
-- Ends an active lease and frees its device in one statement. A lease whose
-- time ran out before the reaper got to it ends as expired whatever the
-- caller asked, so the caller can tell its holder it had lost the device.
-- The device is freed only while it still carries this lease and its
-- fencing token, and goes to maintenance instead of idle when an admin
-- drained it meanwhile. With owner set, only that owner's lease ends (a holder's
-- release checks ownership in the same statement, one round trip); NULL
-- ends whoever's it is. A freed device goes straight to the first waiter in
-- line it fits (devalloc.hand_off, only looked for when the pool has
-- waiters): handed_to lists the waiters served, for the caller to tell
-- their instances. Otherwise the freed device's id and labels come back and
-- the caller notifies after commit (notify_by_caller, see
-- migrations/00007), so the trigger does not NOTIFY inside this
-- transaction.
WITH caller_notifies AS (
    SELECT set_config('devalloc.notify_by_caller', 'on', true) AS notify_by_caller
), ended AS (
    UPDATE devalloc.leases l SET
        released_at = clock_timestamp(),
        end_reason  = CASE WHEN l.expires_at <= now() THEN 'expired' ELSE @end_reason::text END
    WHERE l.id = @id AND l.released_at IS NULL
      AND (sqlc.narg('owner')::text IS NULL OR l.owner = sqlc.narg('owner'))
    RETURNING l.*
), freed AS (
    UPDATE devalloc.devices d SET
        state        = CASE WHEN d.drain THEN 'maintenance' ELSE 'idle' END,
        state_reason = CASE WHEN d.drain THEN 'drained: maintenance once its lease ended' ELSE '' END,
        drain        = false,
        lease_id     = NULL,
        idle_since   = now(),
        updated_at   = now()
    FROM ended, caller_notifies
    WHERE d.id = ended.device_id AND d.lease_id = ended.id AND d.fencing_token = ended.fencing_token
    RETURNING d.id, d.pool, d.labels, d.state
)
SELECT ended.*, freed.id AS freed_device_id, freed.labels AS freed_labels, freed.state AS freed_state,
       CASE WHEN freed.state = 'idle' AND EXISTS (SELECT 1 FROM devalloc.waiters w WHERE w.pool = freed.pool)
            THEN (SELECT array_agg(DISTINCT h.waiter_id) FROM devalloc.hand_off(freed.id) h)
       END::uuid[] AS handed_to
FROM ended LEFT JOIN freed ON true;

-- name: DueLeases :many
-- Active leases whose time ran out (database clock), oldest first: the
-- reaper ends each with EndLease, which hands its device to the line.
SELECT id FROM devalloc.leases
WHERE released_at IS NULL AND expires_at <= now()
ORDER BY expires_at
LIMIT @batch;
