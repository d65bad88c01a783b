-- Devices: registration, reads and admin changes.

-- name: CreateDevice :one
INSERT INTO devalloc.devices (name, pool, labels, address, probe)
VALUES (@name, @pool, @labels, @address, @probe)
RETURNING *;

-- name: GetDevice :one
SELECT * FROM devalloc.devices WHERE name = @name;

-- name: GetDeviceByID :one
SELECT * FROM devalloc.devices WHERE id = @id;

-- name: LockDevice :one
-- Locks the row so an admin change cannot interleave with an acquire or release.
SELECT * FROM devalloc.devices WHERE name = @name FOR UPDATE;

-- name: ListDevices :many
-- One page of devices by name, after the previous page's last name when
-- given: keyset pagination on the name indexes, never OFFSET. The first page
-- starts at '' (the least string), so the cursor condition is an index bound
-- even in a generic plan of the prepared statement.
SELECT * FROM devalloc.devices
WHERE (sqlc.narg('pool')::text IS NULL OR pool = sqlc.narg('pool'))
  AND (sqlc.narg('state')::text IS NULL OR state = sqlc.narg('state'))
  AND name >= coalesce(sqlc.narg('after_name')::text, '')
  AND (sqlc.narg('after_name')::text IS NULL OR name <> sqlc.narg('after_name'))
ORDER BY name
LIMIT @max_rows;

-- name: UpdateDeviceSpec :one
-- Changes what a device is (labels, address, probe); never its state.
UPDATE devalloc.devices SET
    labels     = coalesce(sqlc.narg('labels'), labels),
    address    = coalesce(sqlc.narg('address'), address),
    probe      = coalesce(sqlc.narg('probe'), probe),
    updated_at = now()
WHERE id = @id
RETURNING *;

-- name: SetDeviceState :one
-- An admin moves a device that is not leased between idle, offline and maintenance.
UPDATE devalloc.devices SET
    state          = @state,
    state_reason   = @state_reason,
    drain          = false,
    idle_since     = CASE WHEN @state::text = 'idle' THEN now() ELSE idle_since END,
    probe_failures = 0,
    next_probe_at  = NULL,
    updated_at     = now()
WHERE id = @id AND state <> 'leased'
RETURNING *;

-- name: SetDeviceDrain :one
-- Marks a leased device for maintenance when its lease ends, or clears that.
UPDATE devalloc.devices SET drain = @drain, updated_at = now()
WHERE id = @id
RETURNING *;

-- name: EndLeaseForRemoval :one
-- A forced delete ends the device's lease without freeing the device, which
-- goes in the same transaction: nobody in line is handed it. Like every
-- release it locks the lease before the device. A lease whose time had run
-- out ends as expired.
UPDATE devalloc.leases l SET
    released_at = clock_timestamp(),
    end_reason  = CASE WHEN l.expires_at <= now() THEN 'expired' ELSE 'device_removed' END
-- Active, by id (see RenewLease for why not released_at IS NULL).
WHERE l.id = @id AND l.active_device_id IS NOT NULL
RETURNING l.id;

-- name: DeleteDevice :execrows
-- A leased device goes only with the lease this transaction ended
-- (ended_lease_id, from EndLeaseForRemoval).
DELETE FROM devalloc.devices
WHERE id = @id AND (state <> 'leased' OR lease_id = sqlc.narg('ended_lease_id')::uuid);

-- name: SelectorCanMatch :one
-- Whether at least want registered devices, in any state, fit a selector:
-- if fewer do, waiting is pointless.
SELECT count(*) >= @want::int AS can_match FROM (
    SELECT 1 FROM devalloc.devices WHERE pool = @pool AND labels @> @labels LIMIT @want::int
) fitting;

-- name: PoolSummaries :many
-- Devices per pool by state, and the pool's line across all (live)
-- instances: the DBAs' view, so both read the same numbers.
SELECT s.pool, s.idle, s.leased, s.offline, s.maintenance, s.waiting::bigint AS waiting,
       coalesce(extract(epoch FROM s.oldest_wait), 0)::float8 AS oldest_wait_seconds
FROM devalloc.pool_summary s
ORDER BY s.pool;

-- name: IdleDevicesFitting :many
-- The waiter re-check: for each selector that waits at this instance in
-- the pool (a JSON array of label objects), the labels of one idle device
-- it fits, if any; a selector nothing idle fits gives no row. It finds a
-- fitting device however many idle devices fit nobody (one index probe per
-- selector). One query per pool, never per waiter.
SELECT fit.labels
FROM jsonb_array_elements(@selectors::jsonb) AS s(selector)
CROSS JOIN LATERAL (
    SELECT d.labels FROM devalloc.devices d
    WHERE d.pool = @pool AND d.state = 'idle' AND d.labels @> s.selector
    LIMIT 1
) fit;
