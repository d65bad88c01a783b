-- +goose Up
-- The devalloc schema: devices, their leases, and the invariants PostgreSQL
-- itself enforces so that no code path (ours or a DBA's) can hand one device
-- to two holders.
CREATE SCHEMA IF NOT EXISTS devalloc;
COMMENT ON SCHEMA devalloc IS 'devalloc: device allocator state (devices, leases). See the views for a readable picture.';

CREATE TABLE devalloc.devices (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text        NOT NULL UNIQUE,
    pool            text        NOT NULL DEFAULT 'default',
    labels          jsonb       NOT NULL DEFAULT '{}'
                    CHECK (jsonb_typeof(labels) = 'object' AND NOT jsonb_path_exists(labels, '$.* ? (@.type() != "string")')),
    address         text        NOT NULL,
    probe           text        NOT NULL DEFAULT 'tcp' CHECK (probe IN ('tcp', 'http', 'none')),
    state           text        NOT NULL DEFAULT 'idle' CHECK (state IN ('idle', 'leased', 'offline', 'maintenance')),
    state_reason    text        NOT NULL DEFAULT '',
    lease_id        uuid        UNIQUE,
    fencing_token   bigint      NOT NULL DEFAULT 0,
    idle_since      timestamptz NOT NULL DEFAULT now(),
    last_probe_at   timestamptz,
    last_probe_ok   boolean,
    probe_failures  integer     NOT NULL DEFAULT 0,
    next_probe_at   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT devices_leased_iff_lease CHECK ((state = 'leased') = (lease_id IS NOT NULL)),
    CONSTRAINT devices_id_lease_unique UNIQUE (id, lease_id)
) WITH (fillfactor = 70);

COMMENT ON TABLE devalloc.devices IS 'Every registered device. A device is leased exactly when lease_id points at its active lease (enforced by constraints).';
COMMENT ON COLUMN devalloc.devices.id IS 'Surrogate key; clients use name.';
COMMENT ON COLUMN devalloc.devices.name IS 'Unique human name, the device''s identity in the API.';
COMMENT ON COLUMN devalloc.devices.pool IS 'Pool the device is allocated from (e.g. android, lab-boards).';
COMMENT ON COLUMN devalloc.devices.labels IS 'Flat JSON object of string values; an acquire selects with labels @> selector.';
COMMENT ON COLUMN devalloc.devices.address IS 'Where a holder (and the probe) reaches the device: host:port for tcp, a URL for http.';
COMMENT ON COLUMN devalloc.devices.probe IS 'How the allocator checks the device answers before handing it out: tcp, http or none.';
COMMENT ON COLUMN devalloc.devices.state IS 'idle (can be acquired), leased, offline (failed a probe; the health checker retries) or maintenance (set by an admin).';
COMMENT ON COLUMN devalloc.devices.state_reason IS 'Why the device is in its state, e.g. the probe error that took it offline.';
COMMENT ON COLUMN devalloc.devices.lease_id IS 'The active lease, when state = leased; NULL otherwise.';
COMMENT ON COLUMN devalloc.devices.fencing_token IS 'Bumped on every acquire; the lease carries it so a stale holder cannot act on a newer lease.';
COMMENT ON COLUMN devalloc.devices.idle_since IS 'When the device last became idle; the pick takes the least recently released device first.';
COMMENT ON COLUMN devalloc.devices.last_probe_at IS 'When the device was last probed.';
COMMENT ON COLUMN devalloc.devices.last_probe_ok IS 'Whether that probe passed.';
COMMENT ON COLUMN devalloc.devices.probe_failures IS 'Consecutive failed probes; drives the health checker''s backoff.';
COMMENT ON COLUMN devalloc.devices.next_probe_at IS 'When the health checker may next probe this offline device.';
COMMENT ON COLUMN devalloc.devices.created_at IS 'When the device was registered.';
COMMENT ON COLUMN devalloc.devices.updated_at IS 'When the row last changed.';

-- The pick: idle devices of a pool, least recently released first.
CREATE INDEX devices_idle_pick ON devalloc.devices (pool, idle_since, id) WHERE state = 'idle';
-- Label selectors (labels @> '{...}') over large pools.
CREATE INDEX devices_labels ON devalloc.devices USING gin (labels jsonb_path_ops);
-- The health checker's queue: offline devices due for a probe.
CREATE INDEX devices_offline_due ON devalloc.devices (next_probe_at) WHERE state = 'offline';

CREATE TABLE devalloc.leases (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    device_id        bigint      REFERENCES devalloc.devices (id) ON DELETE SET NULL,
    device_name      text        NOT NULL,
    pool             text        NOT NULL,
    owner            text        NOT NULL,
    holder           text        NOT NULL DEFAULT '',
    fencing_token    bigint      NOT NULL,
    acquired_at      timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    released_at      timestamptz,
    end_reason       text        CHECK (end_reason IN ('released', 'expired', 'revoked', 'device_removed')),
    idempotency_key  text,
    -- The device this lease holds while it is active, NULL once it ended: the
    -- target of the devices -> leases foreign key below.
    active_device_id bigint GENERATED ALWAYS AS (CASE WHEN released_at IS NULL THEN device_id END) STORED,
    CONSTRAINT leases_ended_has_reason CHECK ((released_at IS NULL) = (end_reason IS NULL)),
    CONSTRAINT leases_active_has_device CHECK (released_at IS NOT NULL OR device_id IS NOT NULL),
    CONSTRAINT leases_id_active_device_unique UNIQUE (id, active_device_id)
);

COMMENT ON TABLE devalloc.leases IS 'Leases, active (released_at IS NULL) and ended: the ended rows are the audit history.';
COMMENT ON COLUMN devalloc.leases.id IS 'Lease id handed to the client.';
COMMENT ON COLUMN devalloc.leases.device_id IS 'The device leased; NULL in history once the device was deleted.';
COMMENT ON COLUMN devalloc.leases.device_name IS 'The device''s name at acquire time, kept for history.';
COMMENT ON COLUMN devalloc.leases.pool IS 'The device''s pool at acquire time.';
COMMENT ON COLUMN devalloc.leases.owner IS 'The API key (name) that acquired the lease; only it may renew or release.';
COMMENT ON COLUMN devalloc.leases.holder IS 'Free text from the client, e.g. a CI job URL.';
COMMENT ON COLUMN devalloc.leases.fencing_token IS 'The device''s fencing token at acquire time; strictly increasing per device.';
COMMENT ON COLUMN devalloc.leases.acquired_at IS 'When the lease was granted (database clock).';
COMMENT ON COLUMN devalloc.leases.expires_at IS 'When the lease lapses unless renewed (database clock).';
COMMENT ON COLUMN devalloc.leases.released_at IS 'When the lease ended; NULL while active.';
COMMENT ON COLUMN devalloc.leases.end_reason IS 'Why it ended: released, expired, revoked or device_removed.';
COMMENT ON COLUMN devalloc.leases.idempotency_key IS 'Idempotency-Key header of the acquire, if any.';
COMMENT ON COLUMN devalloc.leases.active_device_id IS 'device_id while active, NULL once ended (generated); ties the device row to its one active lease.';

-- At most one active lease per device.
CREATE UNIQUE INDEX leases_one_active_per_device ON devalloc.leases (device_id) WHERE released_at IS NULL;
-- The reaper's queue: active leases by expiry.
CREATE INDEX leases_active_expiry ON devalloc.leases (expires_at) WHERE released_at IS NULL;
-- Listing a key's active leases.
CREATE INDEX leases_active_owner ON devalloc.leases (owner) WHERE released_at IS NULL;

-- A leased device points at an active lease of its own ...
ALTER TABLE devalloc.devices ADD CONSTRAINT devices_lease_is_active_and_own
    FOREIGN KEY (lease_id, id) REFERENCES devalloc.leases (id, active_device_id)
    DEFERRABLE INITIALLY DEFERRED;
-- ... and every active lease is the one its device points at.
ALTER TABLE devalloc.leases ADD CONSTRAINT leases_active_is_devices_lease
    FOREIGN KEY (active_device_id, id) REFERENCES devalloc.devices (id, lease_id)
    DEFERRABLE INITIALLY DEFERRED;

-- +goose Down
DROP TABLE devalloc.devices, devalloc.leases CASCADE;
