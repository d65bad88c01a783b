-- +goose Up
-- Views for DBAs reading devalloc with psql.

CREATE VIEW devalloc.active_leases AS
SELECT l.id          AS lease_id,
       d.name        AS device,
       d.pool,
       d.address,
       l.owner,
       l.holder,
       l.fencing_token,
       l.acquired_at,
       l.expires_at,
       l.expires_at - now() AS expires_in
FROM devalloc.leases l
JOIN devalloc.devices d ON d.id = l.device_id
WHERE l.released_at IS NULL;
COMMENT ON VIEW devalloc.active_leases IS 'Leases in force now, with their device and owner; expires_in is negative for a lapsed lease the reaper has not ended yet.';

CREATE VIEW devalloc.pool_summary AS
SELECT pool,
       count(*)                                      AS devices,
       count(*) FILTER (WHERE state = 'idle')        AS idle,
       count(*) FILTER (WHERE state = 'leased')      AS leased,
       count(*) FILTER (WHERE state = 'offline')     AS offline,
       count(*) FILTER (WHERE state = 'maintenance') AS maintenance
FROM devalloc.devices
GROUP BY pool;
COMMENT ON VIEW devalloc.pool_summary IS 'Devices per pool by state.';

CREATE VIEW devalloc.lease_history AS
SELECT l.id AS lease_id,
       l.device_name AS device,
       l.pool,
       l.owner,
       l.holder,
       l.fencing_token,
       l.acquired_at,
       l.released_at,
       l.end_reason,
       l.released_at - l.acquired_at AS held_for
FROM devalloc.leases l
WHERE l.released_at IS NOT NULL
ORDER BY l.released_at DESC;
COMMENT ON VIEW devalloc.lease_history IS 'Ended leases, most recent first: who held which device, for how long, and why it ended.';

-- +goose Down
DROP VIEW devalloc.lease_history;
DROP VIEW devalloc.pool_summary;
DROP VIEW devalloc.active_leases;
