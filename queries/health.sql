-- The health checker: offline devices are re-probed with backoff.

-- name: ClaimOfflineDue :many
-- Claims offline devices due for a probe by pushing their next probe time
-- forward, so no other instance probes them meanwhile.
UPDATE devalloc.devices SET next_probe_at = now() + make_interval(secs => @claim_seconds::float8)
WHERE id IN (
    SELECT id FROM devalloc.devices
    -- NULL next_probe_at (an admin's or a DBA's state change) is due.
    WHERE state = 'offline' AND coalesce(next_probe_at, '-infinity'::timestamptz) <= now()
    ORDER BY coalesce(next_probe_at, '-infinity'::timestamptz)
    LIMIT @batch
    FOR UPDATE SKIP LOCKED
)
RETURNING *;

-- name: RecordRecovered :one
-- The device answers again: back to idle, and straight to the first waiter
-- in line it fits, if any (handed_to; see devalloc.hand_off). A device an
-- admin drained while it was leased (it failed its probe when handed over
-- from the line) goes to maintenance instead. No row: it was not offline
-- any more.
WITH recovered AS (
    UPDATE devalloc.devices dv SET
        state          = CASE WHEN dv.drain THEN 'maintenance' ELSE 'idle' END,
        state_reason   = CASE WHEN dv.drain THEN 'drained: maintenance once it answered again' ELSE '' END,
        drain          = false,
        last_probe_at  = now(),
        last_probe_ok  = true,
        probe_failures = 0,
        next_probe_at  = NULL,
        idle_since     = now(),
        updated_at     = now()
    WHERE dv.id = @id AND dv.state = 'offline'
    RETURNING dv.id AS device_id, dv.pool
)
SELECT recovered.device_id,
       CASE WHEN EXISTS (SELECT 1 FROM devalloc.waiters w WHERE w.pool = recovered.pool)
            THEN (SELECT array_agg(DISTINCT h.waiter_id) FROM devalloc.hand_off(recovered.device_id) h)
       END::uuid[] AS handed_to
FROM recovered;

-- name: RecordStillOffline :exec
UPDATE devalloc.devices SET
    state_reason   = @reason,
    last_probe_at  = now(),
    last_probe_ok  = false,
    probe_failures = probe_failures + 1,
    next_probe_at  = now() + make_interval(secs => @retry_in_seconds::float8),
    updated_at     = now()
WHERE id = @id AND state = 'offline';
