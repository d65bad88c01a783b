-- History: ended leases and device events, pruned after the retention.

-- name: PruneHistory :execrows
-- Deletes up to batch ended leases that were released before cutoff,
-- oldest first. It walks leases_acquired from the oldest lease (a lease
-- released before cutoff was acquired before it too), so each batch reads
-- little; long-held active leases are passed over, never deleted. SKIP
-- LOCKED: instances pruning at once take different rows.
DELETE FROM devalloc.leases
WHERE id IN (
    SELECT l.id FROM devalloc.leases l
    WHERE l.acquired_at < @cutoff AND l.released_at < @cutoff
    ORDER BY l.acquired_at, l.id
    LIMIT @batch
    FOR UPDATE SKIP LOCKED
);

-- name: PruneDeviceEvents :execrows
-- Deletes up to batch device events older than cutoff, oldest first.
DELETE FROM devalloc.device_events
WHERE id IN (
    SELECT e.id FROM devalloc.device_events e
    WHERE e.at < @cutoff
    ORDER BY e.at
    LIMIT @batch
    FOR UPDATE SKIP LOCKED
);
