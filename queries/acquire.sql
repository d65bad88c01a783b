-- The acquire transaction: pick, (probe), grant or mark offline.

-- name: PickIdleDevice :one
-- Least recently released idle device that fits the selector, locked (see
-- devalloc.pick_idle_device; SKIP LOCKED: concurrent acquires never wait on
-- each other's probes). The function runs once, in the CTE.
-- Nothing is picked while anyone waits in the pool's line: a new request
-- never overtakes it (the caller queues instead).
WITH pick AS (
    SELECT devalloc.pick_idle_device(@pool::text, @labels::jsonb) AS id
    WHERE NOT EXISTS (SELECT 1 FROM devalloc.waiters w WHERE w.pool = @pool::text)
)
SELECT * FROM devalloc.devices
WHERE id = (SELECT pick.id FROM pick);

-- name: GrantLease :one
-- Marks the picked device leased, bumps its fencing token and records the
-- lease, in one statement. With an idempotency key, a lease the owner already
-- got with that key fails the insert (unique violation on
-- leases_owner_idempotency_key) and the caller rolls back. Lease times use clock_timestamp(), not now():
-- now() is when the transaction began, which may be before the previous
-- holder's release committed. The deferred constraints check at commit that the
-- device and its lease point at each other. A keyed grant first takes the
-- key's advisory lock (devalloc.lock_idempotency_key, migrations/00019),
-- waiting for a grant of the key from the line: that one then never meets
-- this lease in the unique index, and the twins' rows this lease removes
-- (devalloc.tell_twins) are all there to see.
WITH dev AS (
    UPDATE devalloc.devices d SET
        state         = 'leased',
        state_reason  = '',
        lease_id      = @lease_id,
        fencing_token = d.fencing_token + 1,
        last_probe_at = CASE WHEN @probed::boolean THEN now() ELSE d.last_probe_at END,
        last_probe_ok = CASE WHEN @probed::boolean THEN true ELSE d.last_probe_ok END,
        updated_at    = now()
    WHERE d.id = @device_id AND d.state = 'idle'
    -- Read the clock once: two calls may differ, and the lease would last a
    -- microsecond longer than asked.
    RETURNING d.id, d.name, d.pool, d.fencing_token, clock_timestamp() AS granted_at
)
INSERT INTO devalloc.leases (id, device_id, device_name, pool, owner, holder, fencing_token, acquired_at, expires_at,
                             idempotency_key, request_fingerprint)
SELECT @lease_id, dev.id, dev.name, dev.pool, @owner, @holder, dev.fencing_token,
       dev.granted_at, dev.granted_at + make_interval(secs => @ttl_seconds::float8),
       sqlc.narg('idempotency_key'), sqlc.narg('request_fingerprint')
FROM dev
WHERE devalloc.lock_idempotency_key(@owner, sqlc.narg('idempotency_key'))
RETURNING *;

-- name: MarkDeviceOffline :exec
-- The probe failed: take the device out of rotation until the health
-- checker sees it answer again.
UPDATE devalloc.devices SET
    state          = 'offline',
    state_reason   = @reason,
    last_probe_at  = now(),
    last_probe_ok  = false,
    probe_failures = probe_failures + 1,
    next_probe_at  = now() + make_interval(secs => @retry_in_seconds::float8),
    updated_at     = now()
WHERE id = @id AND state = 'idle';

-- name: GrantUnprobed :one
-- The whole acquire in one statement, for a device that needs no probe:
-- pick the least recently released idle device that fits
-- (devalloc.pick_idle_device, SKIP LOCKED),
-- grant it and record the lease. It grants only when the picked device's
-- probe is "none", or it was released or passed a probe within
-- fresh_seconds (0 turns that off). No row: nothing fitting is idle (or
-- every fitting idle device is locked by another acquire). A row without a
-- lease: the picked device needs a probe, so the caller runs the acquire
-- transaction, which probes. Run outside a transaction, the statement is its own: one round
-- trip and one commit per acquire. The lease row comes back with the
-- device's labels and address, so the answer needs no second query.
-- While anyone waits in the pool's line nothing is picked and queued comes
-- back true: a new request never overtakes the line (the caller queues).
WITH queue AS (
    SELECT EXISTS (SELECT 1 FROM devalloc.waiters w WHERE w.pool = @pool::text) AS busy
), picked AS (
    SELECT devalloc.pick_idle_device(@pool::text, @labels::jsonb) AS id
    FROM queue WHERE NOT queue.busy
), pick AS (
    SELECT picked.id FROM picked WHERE picked.id IS NOT NULL
), dev AS (
    UPDATE devalloc.devices d SET
        state         = 'leased',
        state_reason  = '',
        lease_id      = @lease_id::uuid,
        fencing_token = d.fencing_token + 1,
        updated_at    = now()
    FROM pick
    WHERE d.id = pick.id AND d.state = 'idle'
      AND (d.probe = 'none'
           OR (@fresh_seconds::float8 > 0
               AND ((d.fencing_token > 0 AND d.idle_since > now() - make_interval(secs => @fresh_seconds::float8))
                    OR (d.last_probe_ok AND d.last_probe_at > now() - make_interval(secs => @fresh_seconds::float8)))))
    RETURNING d.id, d.name, d.pool, d.labels, d.address, d.fencing_token, clock_timestamp() AS granted_at
), lease AS (
    INSERT INTO devalloc.leases (id, device_id, device_name, pool, owner, holder, fencing_token, acquired_at, expires_at,
                                 idempotency_key, request_fingerprint)
    SELECT @lease_id, dev.id, dev.name, dev.pool, @owner, @holder, dev.fencing_token,
           dev.granted_at, dev.granted_at + make_interval(secs => @ttl_seconds::float8),
           sqlc.narg('idempotency_key'), sqlc.narg('request_fingerprint')
    FROM dev
    -- Keyed: waits for a grant of the key from the line (see GrantLease).
    WHERE devalloc.lock_idempotency_key(@owner, sqlc.narg('idempotency_key'))
    RETURNING id, device_name, pool, owner, holder, fencing_token, acquired_at, expires_at
)
SELECT queue.busy AS queued, pick.id AS picked_id, lease.id, lease.device_name, lease.pool, lease.owner, lease.holder, lease.fencing_token,
       lease.acquired_at, lease.expires_at, dev.labels AS device_labels, dev.address AS device_address
FROM queue
LEFT JOIN pick ON true
LEFT JOIN lease ON true
LEFT JOIN dev ON true;

-- name: NarrowTimeouts :exec
-- What is left of an acquire transaction's bound after a probe ran: its
-- grant may wait on locks only that long (SET LOCAL, as BEGIN set them).
SELECT set_config('lock_timeout', @ms::text, true),
       set_config('statement_timeout', @ms::text, true);
