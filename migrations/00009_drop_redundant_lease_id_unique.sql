-- +goose Up
-- devices.lease_id needs no index of its own: the foreign key
-- devices_lease_is_active_and_own ties (lease_id, id) to a lease's
-- (id, active_device_id), and a lease id names one lease with one device,
-- so two devices can never point at the same lease. Every acquire and
-- release rewrites the device row (a new entry in each of its indexes);
-- one index fewer is less WAL per cycle, the allocator's bound on this
-- machine (devalloc bench: about 3,000 bytes of WAL per acquire+release
-- against 900 for the bare-SQL floor).
ALTER TABLE devalloc.devices DROP CONSTRAINT devices_lease_id_key;

-- +goose Down
ALTER TABLE devalloc.devices ADD CONSTRAINT devices_lease_id_key UNIQUE (lease_id);
