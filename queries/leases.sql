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
-- Extends an active lease that has not lapsed yet (database clock). A
-- handoff still under its waiter's probe (handoff_pending) is nobody's
-- answer yet and may be taken back: it is not renewed.
-- "Active" is written as active_device_id IS NOT NULL (the same thing: see
-- the column) so that the lookup goes by the lease id: with released_at IS
-- NULL the planner may scan a partial index of active leases ordered by
-- acquired_at from one end, through every dead entry of released leases
-- that vacuum has not removed yet.
UPDATE devalloc.leases SET expires_at = clock_timestamp() + make_interval(secs => @ttl_seconds::float8)
WHERE id = @id AND active_device_id IS NOT NULL AND expires_at > now() AND NOT handoff_pending
RETURNING *;

-- name: EndLease :one
-- Ends an active lease and frees its device in one statement. A lease whose
-- time ran out before the reaper got to it ends as expired whatever the
-- caller asked, so the caller can tell its holder it had lost the device.
-- The device is freed only while it still carries this lease and its
-- fencing token, and goes to maintenance instead of idle when an admin
-- drained it meanwhile; a drain that comes too late to stop a handoff (it
-- committed after this statement began) stays on the device for the new
-- lease's end. With owner set, only that owner's lease ends (a
-- holder's release checks ownership in the same statement, one round trip);
-- NULL ends whoever's it is.
--
-- With expired_only (the reaper), only a lease whose time ran out ends.
-- The check is in the UPDATE's WHERE on purpose: PostgreSQL re-evaluates
-- it on the latest version of the row it locks, so a renew that committed
-- after the reaper read the lease as due (its holder was told 200) keeps
-- the lease and this statement ends nothing (no row). Releases and revokes
-- pass false: a lapsed lease they end is still recorded as expired.
--
-- With pending_only (the re-check giving back what a keyed request's
-- stranded waiter was handed), only a handoff still under probe ends, for
-- the same reason and in the same way: a confirm that committed after the
-- re-check read the lease as pending made it the retry's answer, and
-- ending it then would keep its key on a dead lease (the key is given up
-- only by a pending lease that ends, see migrations/00018).
--
-- Direct handoff: when the first live waiter in the pool's line that the
-- device fits wants one device, the device goes straight to it in this
-- same statement (a new lease, fencing token bumped, the waiter's row
-- gone), and its instance is told at commit (NOTIFY on its own channel,
-- with the lease, as devalloc.grant_to_waiter does): handed_to names the waiter
-- (devalloc.first_in_line finds and locks it; waiters locked by another
-- transaction are being served and are skipped). When a group that fits
-- the device is first, nobody here gets it:
-- group_waits says so, and the caller runs the pool's dispatcher after
-- commit (only it gathers groups). Otherwise the freed device's id and
-- labels come back and the caller notifies after commit
-- (notify_by_caller, see migrations/00007).
WITH caller_notifies AS (
    SELECT set_config('devalloc.notify_by_caller', 'on', true) AS notify_by_caller
), ended AS (
    UPDATE devalloc.leases l SET
        released_at = clock_timestamp(),
        end_reason  = CASE WHEN l.expires_at <= now() THEN 'expired' ELSE @end_reason::text END
    -- Active, by id (see RenewLease for why not released_at IS NULL).
    WHERE l.id = @id AND l.active_device_id IS NOT NULL
      AND (sqlc.narg('owner')::text IS NULL OR l.owner = sqlc.narg('owner'))
      AND (NOT @expired_only::boolean OR l.expires_at <= now())
      AND (NOT @pending_only::boolean OR l.handoff_pending)
    RETURNING l.*
), dev AS (
    -- The device as the ending lease holds it.
    SELECT d.id, d.pool, d.labels, d.drain
    FROM devalloc.devices d JOIN ended ON d.id = ended.device_id AND d.lease_id = ended.id
                                      AND d.fencing_token = ended.fencing_token
), head AS (
    -- Only looked for when the pool has a line: a plain release pays one
    -- index probe, not a function call.
    SELECT h.* FROM dev CROSS JOIN LATERAL devalloc.first_in_line(dev.pool, dev.labels) h
    WHERE NOT dev.drain AND EXISTS (SELECT 1 FROM devalloc.waiters q WHERE q.pool = dev.pool)
), served AS (
    DELETE FROM devalloc.waiters w USING head WHERE w.id = head.id
    RETURNING w.id, w.instance_id, w.owner, w.holder, w.ttl_seconds, w.idempotency_key, w.request_fingerprint,
              w.probes_handoff, gen_random_uuid() AS lease_id
), freed AS (
    UPDATE devalloc.devices d SET
        state         = CASE WHEN served.id IS NOT NULL THEN 'leased' WHEN d.drain THEN 'maintenance' ELSE 'idle' END,
        state_reason  = CASE WHEN served.id IS NULL AND d.drain THEN 'drained: maintenance once its lease ended' ELSE '' END,
        -- A drain committed after this statement's snapshot (read in dev,
        -- so the device went to a waiter anyway) is seen here, under the
        -- row lock: it stays, for the new lease's end.
        drain         = CASE WHEN served.id IS NOT NULL THEN d.drain ELSE false END,
        lease_id      = served.lease_id,
        fencing_token = d.fencing_token + CASE WHEN served.id IS NOT NULL THEN 1 ELSE 0 END,
        idle_since    = now(),
        updated_at    = now()
    FROM ended CROSS JOIN caller_notifies LEFT JOIN served ON true
    WHERE d.id = ended.device_id AND d.lease_id = ended.id AND d.fencing_token = ended.fencing_token
    RETURNING d.id, d.name, d.pool, d.labels, d.address, d.probe, d.state, d.fencing_token, d.lease_id, clock_timestamp() AS at
), granted AS (
    INSERT INTO devalloc.leases (id, device_id, device_name, pool, owner, holder, fencing_token, acquired_at, expires_at,
                                 idempotency_key, request_fingerprint, waiter_id, handoff_pending)
    -- Pending while the waiter's instance probes the device (see
    -- migrations/00018, as in devalloc.grant_to_waiter).
    SELECT freed.lease_id, freed.id, freed.name, freed.pool, served.owner, served.holder, freed.fencing_token,
           freed.at, freed.at + make_interval(secs => served.ttl_seconds),
           served.idempotency_key, served.request_fingerprint, served.id, served.probes_handoff
    FROM freed JOIN served ON freed.lease_id = served.lease_id
    RETURNING *
), told AS (
    -- The served notice, as devalloc.grant_to_waiter sends it
    -- (migrations/00022).
    SELECT devalloc.notify_served(served.instance_id, granted.waiter_id, json_build_array(devalloc.served_lease(
               granted.id, granted.device_id, granted.device_name, granted.pool, granted.owner, granted.holder,
               granted.fencing_token, granted.acquired_at, granted.expires_at, granted.group_id,
               freed.labels, freed.address, freed.probe))) AS sent
    FROM granted JOIN freed ON freed.id = granted.device_id JOIN served ON served.id = granted.waiter_id
)
SELECT ended.*, freed.id AS freed_device_id, freed.labels AS freed_labels,
       freed.state AS freed_state,
       granted.waiter_id AS handed_to,
       (SELECT count(*) FROM told) AS told,
       coalesce(granted.id IS NULL AND freed.state = 'idle' AND EXISTS (
            SELECT 1 FROM devalloc.waiters g
            WHERE g.pool = freed.pool AND g.count > 1 AND freed.labels @> g.labels), false)::boolean AS group_waits
FROM ended LEFT JOIN freed ON true LEFT JOIN granted ON true;

-- name: DueLeases :many
-- Active leases whose time ran out (database clock), oldest first, after
-- the previous batch's last (expires_at, id) when given: the reaper ends
-- each with EndLease, which hands its device to the line. One pass walks
-- the due leases once, past those it could not end, so that any number of
-- leases that fail every time take no batch from the others (the id
-- breaks ties, so none is passed over). The first batch starts above
-- (-infinity, nil uuid).
--
-- A handoff still under its waiter's probe (handoff_pending) is left to
-- its probe: the confirm starts its TTL over (migrations/00020), so a probe
-- slower than the TTL must not lose it. Past its expires_at it is due once
-- the probe can no longer confirm it either, its settle bound after the
-- handoff (acquired_at): (devices in its group + 1) times the probe timeout
-- + 1 s, the shape of handoffSettleBound in db/replay.go. So a
-- handoff whose waiter's instance died mid-probe ends at its expiry, as any
-- lease, unless its TTL is shorter than that bound.
-- The probe timeout is the longest any instance registered (the waiter's
-- may be longer than this reaper's; migrations/00021), at least this one's;
-- a retry's take-back still uses its own instance's (instances of one
-- database should share --probe-timeout).
-- The group is counted in a subquery run only for pending leases, so the
-- scan of due leases stays an ordered index scan that stops at the batch.
SELECT l.id, l.expires_at
FROM devalloc.leases l
WHERE l.released_at IS NULL AND l.expires_at <= now()
  AND (NOT l.handoff_pending
       OR l.acquired_at + make_interval(secs => 1 + (1 + greatest(1, (SELECT count(*) FROM devalloc.leases m WHERE m.group_id = l.group_id)))
              * greatest((SELECT max(extract(epoch FROM i.probe_timeout)) FROM devalloc.instances i)::float8,
                         @probe_timeout_seconds::float8)) <= now())
  AND (l.expires_at, l.id) > (coalesce(sqlc.narg('after_expires_at')::timestamptz, '-infinity'),
                              coalesce(sqlc.narg('after_id')::uuid, '00000000-0000-0000-0000-000000000000'))
ORDER BY l.expires_at, l.id
LIMIT @batch;
