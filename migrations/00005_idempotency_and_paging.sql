-- +goose Up
-- Idempotent acquire (a retried POST /v1/leases with the same Idempotency-Key
-- gets the same lease) and keyset pagination of the device and lease lists.

-- What the acquire that got a lease asked for, so a retry with the same key
-- can be told from a different request reusing it.
ALTER TABLE devalloc.leases ADD COLUMN request_fingerprint bytea
    CONSTRAINT leases_request_fingerprint_sha256 CHECK (octet_length(request_fingerprint) = 32);
COMMENT ON COLUMN devalloc.leases.request_fingerprint IS
    'SHA-256 of the acquire''s pool, labels, ttl_seconds and holder (not its wait), set with idempotency_key. '
    'A retry with the key gets this lease only if its fingerprint is equal; NULL (leases from before 00005) matches any.';
COMMENT ON COLUMN devalloc.leases.idempotency_key IS
    'Idempotency-Key header of the acquire, if any: unique per owner, so a retry with it gets this lease again, active or ended.';

-- Before this migration keys were only recorded, so one owner may have used a
-- key twice. Only the newest such lease keeps it (a retry would have wanted the
-- latest); the index below could not be built otherwise.
UPDATE devalloc.leases l SET idempotency_key = NULL
WHERE l.idempotency_key IS NOT NULL
  AND EXISTS (
    SELECT 1 FROM devalloc.leases n
    WHERE n.owner = l.owner AND n.idempotency_key = l.idempotency_key
      AND (n.acquired_at, n.id) > (l.acquired_at, l.id));

-- One lease per (owner, key), whoever's instance grants it: an acquire that
-- loses the race here rolls back (its device stays idle) and answers with the
-- winner's lease. Ended leases keep their key, so a late retry still finds it.
CREATE UNIQUE INDEX leases_owner_idempotency_key ON devalloc.leases (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
COMMENT ON INDEX devalloc.leases_owner_idempotency_key IS 'At most one lease per owner and Idempotency-Key.';

-- Keyset pagination: each page is an index range scan after the previous
-- page's last sort key, never an OFFSET, so late pages cost what early ones do.
-- Leases list newest first by (acquired_at, id); devices by name (the UNIQUE
-- constraint's index serves the unfiltered list).
CREATE INDEX leases_acquired ON devalloc.leases (acquired_at, id);
COMMENT ON INDEX devalloc.leases_acquired IS 'Lease list pages (GET /v1/leases), newest first.';
CREATE INDEX leases_owner_acquired ON devalloc.leases (owner, acquired_at, id);
COMMENT ON INDEX devalloc.leases_owner_acquired IS 'A client key''s lease list pages.';
CREATE INDEX leases_active_acquired ON devalloc.leases (acquired_at, id) WHERE released_at IS NULL;
COMMENT ON INDEX devalloc.leases_active_acquired IS 'Active lease list pages (active=true).';
CREATE INDEX devices_pool_name ON devalloc.devices (pool, name);
COMMENT ON INDEX devalloc.devices_pool_name IS 'Device list pages filtered by pool.';
CREATE INDEX devices_state_name ON devalloc.devices (state, name);
COMMENT ON INDEX devalloc.devices_state_name IS 'Device list pages filtered by state.';

-- +goose Down
DROP INDEX devalloc.devices_state_name;
DROP INDEX devalloc.devices_pool_name;
DROP INDEX devalloc.leases_active_acquired;
DROP INDEX devalloc.leases_owner_acquired;
DROP INDEX devalloc.leases_acquired;
DROP INDEX devalloc.leases_owner_idempotency_key;
ALTER TABLE devalloc.leases DROP COLUMN request_fingerprint;
COMMENT ON COLUMN devalloc.leases.idempotency_key IS 'Idempotency-Key header of the acquire, if any.';
