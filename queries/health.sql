-- The health checker: offline devices are re-probed with backoff.

-- name: ClaimOfflineDue :many
-- Claims offline devices due for a probe by pushing their next probe time
-- forward, so no other instance probes them meanwhile.
UPDATE devalloc.devices SET next_probe_at = now() + make_interval(secs => @claim_seconds::float8)
WHERE id IN (
    SELECT id FROM devalloc.devices
    WHERE state = 'offline' AND next_probe_at <= now()
    ORDER BY next_probe_at
    LIMIT @batch
    FOR UPDATE SKIP LOCKED
)
RETURNING *;

-- name: RecordRecovered :execrows
UPDATE devalloc.devices SET
    state          = 'idle',
    state_reason   = '',
    last_probe_at  = now(),
    last_probe_ok  = true,
    probe_failures = 0,
    next_probe_at  = NULL,
    idle_since     = now(),
    updated_at     = now()
WHERE id = @id AND state = 'offline';

-- name: RecordStillOffline :exec
UPDATE devalloc.devices SET
    state_reason   = @reason,
    last_probe_at  = now(),
    last_probe_ok  = false,
    probe_failures = probe_failures + 1,
    next_probe_at  = now() + make_interval(secs => @retry_in_seconds::float8),
    updated_at     = now()
WHERE id = @id AND state = 'offline';
