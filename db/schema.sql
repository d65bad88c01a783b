-- The devalloc schema as it stands after every migration in migrations/:
-- tables with their constraints and comments, indexes, functions, views and
-- triggers, in an order that builds it. Written by `make generate` from a
-- migrated database (db/migrate/schema.go); do not edit it. It is for
-- reading (one file instead of a function redefined across migrations): a
-- database is built and upgraded by the migrations, never from this file.
-- goose's own bookkeeping table (devalloc.goose_db_version) is left out.
-- Dumped from PostgreSQL 15.

CREATE SCHEMA devalloc;
COMMENT ON SCHEMA devalloc IS 'devalloc: device allocator state (devices, leases). See the views for a readable picture.';

-- Tables
-- ------

CREATE TABLE devalloc.api_keys (
    id bigint GENERATED ALWAYS AS IDENTITY,
    name text NOT NULL,
    role text NOT NULL,
    secret_hash bytea NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    revoked_at timestamp with time zone,
    CONSTRAINT api_keys_pkey PRIMARY KEY (id),
    CONSTRAINT api_keys_secret_hash_key UNIQUE (secret_hash),
    CONSTRAINT api_keys_name_check CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'::text),
    CONSTRAINT api_keys_role_check CHECK (role = ANY (ARRAY['admin'::text, 'client'::text])),
    CONSTRAINT api_keys_secret_hash_check CHECK (octet_length(secret_hash) = 32)
);
COMMENT ON TABLE devalloc.api_keys IS 'API keys. Only a SHA-256 of each secret is stored; the secret is shown once, when the key is created.';
COMMENT ON COLUMN devalloc.api_keys.id IS 'Surrogate key.';
COMMENT ON COLUMN devalloc.api_keys.name IS 'The key''s name; leases record it as their owner. Unique among keys not revoked.';
COMMENT ON COLUMN devalloc.api_keys.role IS 'admin (everything) or client (acquire, renew and release its own leases; read devices and pools).';
COMMENT ON COLUMN devalloc.api_keys.secret_hash IS 'SHA-256 of the secret (random, 256 bits), never the secret itself.';
COMMENT ON COLUMN devalloc.api_keys.created_at IS 'When the key was created.';
COMMENT ON COLUMN devalloc.api_keys.revoked_at IS 'When the key was revoked; it authenticates nothing from then on.';

CREATE TABLE devalloc.device_events (
    id bigint GENERATED ALWAYS AS IDENTITY,
    device_id bigint,
    device text NOT NULL,
    pool text NOT NULL,
    from_state text NOT NULL,
    to_state text NOT NULL,
    reason text DEFAULT ''::text NOT NULL,
    at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    CONSTRAINT device_events_pkey PRIMARY KEY (id)
);
COMMENT ON TABLE devalloc.device_events IS 'State changes of devices into or out of offline and maintenance (probe failures, recoveries, maintenance), newest last; pruned with the lease history.';
COMMENT ON COLUMN devalloc.device_events.id IS 'Order of the events.';
COMMENT ON COLUMN devalloc.device_events.device_id IS 'The device; NULL once it was deleted.';
COMMENT ON COLUMN devalloc.device_events.device IS 'The device''s name at the time.';
COMMENT ON COLUMN devalloc.device_events.pool IS 'The device''s pool at the time.';
COMMENT ON COLUMN devalloc.device_events.from_state IS 'State before the change.';
COMMENT ON COLUMN devalloc.device_events.to_state IS 'State after the change.';
COMMENT ON COLUMN devalloc.device_events.reason IS 'The device''s state_reason after the change, e.g. the probe error that took it offline.';
COMMENT ON COLUMN devalloc.device_events.at IS 'When the change was made (clock time of the changing statement).';

CREATE TABLE devalloc.devices (
    id bigint GENERATED ALWAYS AS IDENTITY,
    name text NOT NULL,
    pool text DEFAULT 'default'::text NOT NULL,
    labels jsonb DEFAULT '{}'::jsonb NOT NULL,
    address text NOT NULL,
    probe text DEFAULT 'tcp'::text NOT NULL,
    state text DEFAULT 'idle'::text NOT NULL,
    state_reason text DEFAULT ''::text NOT NULL,
    lease_id uuid,
    fencing_token bigint DEFAULT 0 NOT NULL,
    idle_since timestamp with time zone DEFAULT now() NOT NULL,
    last_probe_at timestamp with time zone,
    last_probe_ok boolean,
    probe_failures integer DEFAULT 0 NOT NULL,
    next_probe_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    drain boolean DEFAULT false NOT NULL,
    CONSTRAINT devices_pkey PRIMARY KEY (id),
    CONSTRAINT devices_id_lease_unique UNIQUE (id, lease_id),
    CONSTRAINT devices_name_key UNIQUE (name),
    CONSTRAINT devices_labels_check CHECK (jsonb_typeof(labels) = 'object'::text AND NOT jsonb_path_exists(labels, '$.*?(@.type() != "string")'::jsonpath)),
    CONSTRAINT devices_leased_iff_lease CHECK ((state = 'leased'::text) = (lease_id IS NOT NULL)),
    CONSTRAINT devices_probe_check CHECK (probe = ANY (ARRAY['tcp'::text, 'http'::text, 'none'::text])),
    CONSTRAINT devices_state_check CHECK (state = ANY (ARRAY['idle'::text, 'leased'::text, 'offline'::text, 'maintenance'::text]))
) WITH (fillfactor=70);
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
COMMENT ON COLUMN devalloc.devices.drain IS 'Maintenance is due when the current lease ends (set through PATCH {"drain": true} while leased).';

CREATE TABLE devalloc.fencing_floor (
    name text NOT NULL,
    token bigint NOT NULL,
    CONSTRAINT fencing_floor_pkey PRIMARY KEY (name)
);
COMMENT ON TABLE devalloc.fencing_floor IS 'The highest fencing token of each device name whose device was deleted (or renamed away): a device registered under that name again starts from it, so the name''s tokens only grow. Rows are never lowered or removed.';
COMMENT ON COLUMN devalloc.fencing_floor.name IS 'Device name.';
COMMENT ON COLUMN devalloc.fencing_floor.token IS 'The fencing token the name had reached; a new device of this name starts there (its next lease gets token + 1).';

CREATE TABLE devalloc.instances (
    id bigint GENERATED ALWAYS AS IDENTITY,
    name text NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    seen_at timestamp with time zone DEFAULT now() NOT NULL,
    silent_after interval DEFAULT '00:00:30'::interval NOT NULL,
    probe_timeout interval DEFAULT '00:00:02'::interval NOT NULL,
    CONSTRAINT instances_pkey PRIMARY KEY (id),
    CONSTRAINT instances_probe_timeout_positive CHECK (probe_timeout > '00:00:00'::interval),
    CONSTRAINT instances_silent_after_positive CHECK (silent_after > '00:00:00'::interval)
);
COMMENT ON TABLE devalloc.instances IS 'Running devalloc instances (API servers) that may hold waiting acquires; rows of instances gone for a while are removed with their waiters.';
COMMENT ON COLUMN devalloc.instances.id IS 'Instance id, new at every start; also the key of its liveness advisory lock (1685482609, id).';
COMMENT ON COLUMN devalloc.instances.name IS 'host:pid of the instance, for people.';
COMMENT ON COLUMN devalloc.instances.started_at IS 'When the instance registered.';
COMMENT ON COLUMN devalloc.instances.seen_at IS 'Last heartbeat (every --heartbeat-interval, 10 s by default); older than silent_after, the instance counts as dead for the line even if its lock is held.';
COMMENT ON COLUMN devalloc.instances.silent_after IS 'How long the instance may go without a heartbeat and still count as alive: 3 x its heartbeat interval (30 s by default), written by the instance at registration and every heartbeat.';
COMMENT ON COLUMN devalloc.instances.probe_timeout IS 'The instance''s probe timeout (serve flag probe-timeout), written at registration and every heartbeat. The reaper leaves a handoff still under its waiter''s probe until (devices + 1) x the longest of these + 1 s past its expires_at.';

CREATE TABLE devalloc.leases (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    device_id bigint,
    device_name text NOT NULL,
    pool text NOT NULL,
    owner text NOT NULL,
    holder text DEFAULT ''::text NOT NULL,
    fencing_token bigint NOT NULL,
    acquired_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    released_at timestamp with time zone,
    end_reason text,
    idempotency_key text,
    active_device_id bigint GENERATED ALWAYS AS (
CASE
    WHEN (released_at IS NULL) THEN device_id
    ELSE NULL::bigint
END) STORED,
    request_fingerprint bytea,
    group_id uuid,
    waiter_id uuid,
    given_up_idempotency_key text,
    handoff_pending boolean DEFAULT false NOT NULL,
    CONSTRAINT leases_pkey PRIMARY KEY (id),
    CONSTRAINT leases_id_active_device_unique UNIQUE (id, active_device_id),
    CONSTRAINT leases_active_has_device CHECK (released_at IS NOT NULL OR device_id IS NOT NULL),
    CONSTRAINT leases_end_reason_check CHECK (end_reason = ANY (ARRAY['released'::text, 'expired'::text, 'revoked'::text, 'device_removed'::text, 'probe_failed'::text])),
    CONSTRAINT leases_ended_has_reason CHECK ((released_at IS NULL) = (end_reason IS NULL)),
    CONSTRAINT leases_pending_only_active CHECK (NOT handoff_pending OR released_at IS NULL),
    CONSTRAINT leases_probe_failed_keyless CHECK (end_reason IS DISTINCT FROM 'probe_failed'::text OR idempotency_key IS NULL),
    CONSTRAINT leases_request_fingerprint_sha256 CHECK (octet_length(request_fingerprint) = 32)
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
COMMENT ON COLUMN devalloc.leases.end_reason IS 'Why it ended: released, expired, revoked, device_removed, or probe_failed (handed over from the line, the device did not answer; the waiter went back to its place).';
COMMENT ON COLUMN devalloc.leases.idempotency_key IS 'Idempotency-Key header of the acquire, if any: unique per owner, so a retry with it gets this lease again, active or ended.';
COMMENT ON COLUMN devalloc.leases.active_device_id IS 'device_id while active, NULL once ended (generated); ties the device row to its one active lease.';
COMMENT ON COLUMN devalloc.leases.request_fingerprint IS 'SHA-256 of the acquire''s pool, labels, ttl_seconds and holder (not its wait), set with idempotency_key. A retry with the key gets this lease only if its fingerprint is equal; NULL (leases from before 00005) matches any.';
COMMENT ON COLUMN devalloc.leases.group_id IS 'Shared by the leases of one group acquire (count > 1); NULL for a single lease.';
COMMENT ON COLUMN devalloc.leases.waiter_id IS 'The waiters row this lease was handed to (NULL when granted without waiting in line).';
COMMENT ON COLUMN devalloc.leases.given_up_idempotency_key IS 'The Idempotency-Key this lease carried until its handoff was given back (a device handed over from the line failed its probe; the waiter went back to its place with the key). Kept for audit only: a retry never replays this lease.';
COMMENT ON COLUMN devalloc.leases.handoff_pending IS 'Handed from the line to a waiter whose instance is probing the device before answering: not an answer to a retry yet. Cleared by devalloc.confirm_handoff (the waiter answers with it) or when the lease ends (then its key is given up).';
COMMENT ON CONSTRAINT leases_pending_only_active ON devalloc.leases IS 'Only an active lease can await its handoff''s confirmation.';
COMMENT ON CONSTRAINT leases_probe_failed_keyless ON devalloc.leases IS 'A lease that ended as probe_failed carries no idempotency key: a retry must never be answered with it.';

CREATE TABLE devalloc.waiters (
    id uuid NOT NULL,
    seq bigint GENERATED BY DEFAULT AS IDENTITY,
    instance_id bigint NOT NULL,
    pool text NOT NULL,
    labels jsonb DEFAULT '{}'::jsonb NOT NULL,
    count integer DEFAULT 1 NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    enqueued_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    ranked_at timestamp with time zone NOT NULL,
    owner text NOT NULL,
    holder text DEFAULT ''::text NOT NULL,
    ttl_seconds double precision NOT NULL,
    idempotency_key text,
    request_fingerprint bytea,
    probes_handoff boolean DEFAULT false NOT NULL,
    CONSTRAINT waiters_pkey PRIMARY KEY (id),
    CONSTRAINT waiters_count_check CHECK (count >= 1 AND count <= 64),
    CONSTRAINT waiters_ttl_seconds_check CHECK (ttl_seconds > 0::double precision)
);
COMMENT ON TABLE devalloc.waiters IS 'Acquires waiting for a device, across all instances. The line of a pool is ORDER BY ranked_at, seq; a row leaves when it is served (its leases carry waiter_id), cancelled, or its instance is gone.';
COMMENT ON COLUMN devalloc.waiters.id IS 'The waiting request (chosen by its instance).';
COMMENT ON COLUMN devalloc.waiters.seq IS 'Arrival order; breaks ties of ranked_at.';
COMMENT ON COLUMN devalloc.waiters.instance_id IS 'The instance holding the client''s connection: only it can answer the request.';
COMMENT ON COLUMN devalloc.waiters.pool IS 'Pool asked for.';
COMMENT ON COLUMN devalloc.waiters.labels IS 'Label selector: a device fits when its labels @> these.';
COMMENT ON COLUMN devalloc.waiters.count IS 'Devices wanted, all at once (a group acquire when > 1).';
COMMENT ON COLUMN devalloc.waiters.priority IS 'Priority asked for; higher is served first.';
COMMENT ON COLUMN devalloc.waiters.enqueued_at IS 'When the request joined the line.';
COMMENT ON COLUMN devalloc.waiters.ranked_at IS 'enqueued_at moved earlier by priority x the aging interval: a waiter ranks like a request of priority p + (time waited / aging interval), so low priorities are not starved.';
COMMENT ON COLUMN devalloc.waiters.owner IS 'API key the leases will belong to.';
COMMENT ON COLUMN devalloc.waiters.holder IS 'Holder text for the leases.';
COMMENT ON COLUMN devalloc.waiters.ttl_seconds IS 'Lifetime of the leases once granted.';
COMMENT ON COLUMN devalloc.waiters.idempotency_key IS 'Idempotency-Key of the request, given to its (first) lease.';
COMMENT ON COLUMN devalloc.waiters.request_fingerprint IS 'Fingerprint stored with the idempotency key.';
COMMENT ON COLUMN devalloc.waiters.probes_handoff IS 'The waiter''s instance probes devices handed to it before answering (Config.ProbeOnHandoff): its leases start handoff_pending.';

-- Foreign keys
-- ------------

ALTER TABLE devalloc.device_events ADD CONSTRAINT device_events_device_id_fkey FOREIGN KEY (device_id) REFERENCES devalloc.devices(id) ON DELETE SET NULL;

ALTER TABLE devalloc.devices ADD CONSTRAINT devices_lease_is_active_and_own FOREIGN KEY (lease_id, id) REFERENCES devalloc.leases(id, active_device_id) DEFERRABLE INITIALLY DEFERRED;

ALTER TABLE devalloc.leases ADD CONSTRAINT leases_active_is_devices_lease FOREIGN KEY (active_device_id, id) REFERENCES devalloc.devices(id, lease_id) DEFERRABLE INITIALLY DEFERRED;

ALTER TABLE devalloc.leases ADD CONSTRAINT leases_device_id_fkey FOREIGN KEY (device_id) REFERENCES devalloc.devices(id) ON DELETE SET NULL;

ALTER TABLE devalloc.waiters ADD CONSTRAINT waiters_instance_id_fkey FOREIGN KEY (instance_id) REFERENCES devalloc.instances(id) ON DELETE CASCADE;

-- Indexes
-- -------

CREATE UNIQUE INDEX api_keys_active_name ON devalloc.api_keys USING btree (name) WHERE (revoked_at IS NULL);

CREATE INDEX device_events_at ON devalloc.device_events USING btree (at);

CREATE INDEX device_events_device ON devalloc.device_events USING btree (device_id, at);

CREATE INDEX devices_idle_pick ON devalloc.devices USING btree (pool, idle_since, id) WHERE (state = 'idle'::text);

CREATE INDEX devices_labels ON devalloc.devices USING gin (labels jsonb_path_ops) WITH (fastupdate=off);

CREATE INDEX devices_offline_due ON devalloc.devices USING btree (COALESCE(next_probe_at, '-infinity'::timestamp with time zone)) WHERE (state = 'offline'::text);
COMMENT ON INDEX devalloc.devices_offline_due IS 'The health checker''s queue: offline devices by next probe time, those without one (NULL) first.';

CREATE INDEX devices_pool_name ON devalloc.devices USING btree (pool, name);
COMMENT ON INDEX devalloc.devices_pool_name IS 'Device list pages filtered by pool.';

CREATE INDEX devices_state_name ON devalloc.devices USING btree (state, name);
COMMENT ON INDEX devalloc.devices_state_name IS 'Device list pages filtered by state.';

CREATE INDEX leases_acquired ON devalloc.leases USING btree (acquired_at, id);
COMMENT ON INDEX devalloc.leases_acquired IS 'Lease list pages (GET /v1/leases), newest first.';

CREATE INDEX leases_active_acquired ON devalloc.leases USING btree (acquired_at, id) WHERE (released_at IS NULL);
COMMENT ON INDEX devalloc.leases_active_acquired IS 'Active lease list pages (active=true).';

CREATE INDEX leases_active_expiry ON devalloc.leases USING btree (expires_at) WHERE (released_at IS NULL);

CREATE INDEX leases_active_owner ON devalloc.leases USING btree (owner) WHERE (released_at IS NULL);

CREATE INDEX leases_group ON devalloc.leases USING btree (group_id) WHERE (group_id IS NOT NULL);

CREATE UNIQUE INDEX leases_one_active_per_device ON devalloc.leases USING btree (device_id) WHERE (released_at IS NULL);

CREATE INDEX leases_owner_acquired ON devalloc.leases USING btree (owner, acquired_at, id);
COMMENT ON INDEX devalloc.leases_owner_acquired IS 'A client key''s lease list pages.';

CREATE UNIQUE INDEX leases_owner_idempotency_key ON devalloc.leases USING btree (owner, idempotency_key) WHERE (idempotency_key IS NOT NULL);
COMMENT ON INDEX devalloc.leases_owner_idempotency_key IS 'At most one lease per owner and Idempotency-Key.';

CREATE INDEX leases_waiter ON devalloc.leases USING btree (waiter_id) WHERE (waiter_id IS NOT NULL);

CREATE INDEX waiters_groups ON devalloc.waiters USING btree (pool, ranked_at, seq) WHERE (count > 1);

CREATE INDEX waiters_idempotency_key ON devalloc.waiters USING btree (owner, idempotency_key) WHERE (idempotency_key IS NOT NULL);

CREATE INDEX waiters_instance ON devalloc.waiters USING btree (instance_id);

CREATE INDEX waiters_line ON devalloc.waiters USING btree (pool, ranked_at, seq);

-- Functions
-- ---------

CREATE OR REPLACE FUNCTION devalloc.claim_idempotency_key(p_owner text, p_key text)
 RETURNS text
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF p_key IS NULL THEN
        RETURN 'free';
    END IF;
    -- Held to the end of the transaction; only grants from the line take
    -- it. A try, never a wait: a release must not queue behind another.
    -- (A hash collision of two keys only skips a waiter for a moment.)
    IF NOT pg_try_advisory_xact_lock(1685482611, hashtext(p_owner || chr(31) || p_key)) THEN
        RETURN 'busy';
    END IF;
    -- A statement of its own, after the lock: under READ COMMITTED its
    -- snapshot sees the lease of a grant committed by the lock's previous
    -- holder.
    IF EXISTS (SELECT 1 FROM devalloc.leases l WHERE l.owner = p_owner AND l.idempotency_key = p_key) THEN
        RETURN 'taken';
    END IF;
    RETURN 'free';
END
$function$;
COMMENT ON FUNCTION devalloc.claim_idempotency_key(p_owner text, p_key text) IS 'Before granting a waiter with this key: free (no key, or no lease has it; the key''s advisory lock (1685482611, hashtext(owner || chr(31) || key)) is now held to commit), busy (another transaction is granting it now: skip the waiter) or taken (a lease has it: the waiter''s retry already got its lease).';

CREATE OR REPLACE FUNCTION devalloc.confirm_handoff(p_leases uuid[])
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_live int;
BEGIN
    -- All or nothing: a group whose one lease ended during the probe
    -- (revoked, reaped) is no answer, and its other leases, still pending,
    -- are given back by the waiter (giving the key up as they end). Locked
    -- in id order, so an end racing this one is seen whole, before or after.
    SELECT count(*) INTO v_live FROM (
        SELECT 1 FROM devalloc.leases WHERE id = ANY (p_leases) AND released_at IS NULL ORDER BY id FOR UPDATE) s;
    IF v_live < cardinality(p_leases) THEN
        RETURN false;
    END IF;
    UPDATE devalloc.leases SET handoff_pending = false WHERE id = ANY (p_leases) AND handoff_pending;
    RETURN true;
END
$function$;
COMMENT ON FUNCTION devalloc.confirm_handoff(p_leases uuid[]) IS 'The waiter''s probe passed: clears handoff_pending on the given leases, which are its answer now, and returns true; false (nothing changed) when any of them ended before (they are no answer: the waiter gives the rest back).';

CREATE OR REPLACE FUNCTION devalloc.confirm_handoff_until(p_leases uuid[])
 RETURNS timestamp with time zone
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_live    int;
    v_now     timestamptz;
    v_expires timestamptz;
BEGIN
    -- Locked in id order, as devalloc.confirm_handoff does, so an end
    -- racing this one is seen whole, before or after.
    SELECT count(*) INTO v_live FROM (
        SELECT 1 FROM devalloc.leases
        WHERE id = ANY (p_leases) AND released_at IS NULL
        ORDER BY id FOR UPDATE) s;
    IF v_live < cardinality(p_leases) THEN
        RETURN NULL;
    END IF;
    -- Now that the leases are locked: a confirm that waited on a lock
    -- (an admin's statement, a DBA) starts the TTL after the wait.
    v_now := clock_timestamp();
    UPDATE devalloc.leases SET handoff_pending = false, expires_at = v_now + (expires_at - acquired_at)
    WHERE id = ANY (p_leases) AND handoff_pending;
    SELECT max(expires_at) INTO v_expires FROM devalloc.leases WHERE id = ANY (p_leases);
    RETURN v_expires;
END
$function$;
COMMENT ON FUNCTION devalloc.confirm_handoff_until(p_leases uuid[]) IS 'The waiter''s probe passed: clears handoff_pending on the given leases, starts their TTL over from now (the probe does not eat it) and returns their new expires_at; NULL (nothing changed) when any of them ended before (they are no answer: the waiter gives the rest back). Replaces confirm_handoff, kept for instances of the version before.';

CREATE OR REPLACE FUNCTION devalloc.dispatch(p_pool text)
 RETURNS SETOF devalloc.leases
 LANGUAGE plpgsql
 ROWS 1
AS $function$
DECLARE
    w          devalloc.waiters;
    v_devices  bigint[];
    v_reserved bigint[] := '{}';
    v_failed   jsonb[] := '{}';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM devalloc.waiters WHERE pool = p_pool)
       OR NOT EXISTS (SELECT 1 FROM devalloc.devices WHERE pool = p_pool AND state = 'idle') THEN
        RETURN;
    END IF;
    -- One dispatcher per pool at a time: a group that cannot be served yet
    -- keeps the devices it fits (v_reserved) from the waiters behind it,
    -- which only works if nobody else hands them out meanwhile.
    PERFORM pg_advisory_xact_lock(1685482610, hashtext(p_pool));
    FOR w IN SELECT * FROM devalloc.waiters WHERE pool = p_pool ORDER BY ranked_at, seq LOOP
        -- A selector no idle device fits makes every narrower one fail too.
        CONTINUE WHEN EXISTS (SELECT 1 FROM unnest(v_failed) f WHERE w.labels @> f);
        CONTINUE WHEN NOT devalloc.instance_alive(w.instance_id);
        SELECT array_agg(s.id) INTO v_devices FROM (
            SELECT d.id FROM devalloc.devices d
            WHERE d.pool = p_pool AND d.state = 'idle' AND d.labels @> w.labels AND d.id <> ALL (v_reserved)
            ORDER BY d.idle_since, d.id
            LIMIT w.count
            FOR UPDATE SKIP LOCKED
        ) s;
        IF v_devices IS NULL THEN
            v_failed := v_failed || w.labels;
            CONTINUE;
        END IF;
        IF cardinality(v_devices) < w.count THEN
            -- First in line for these: they wait for the group.
            v_reserved := v_reserved || v_devices;
            CONTINUE;
        END IF;
        -- Locked: another transaction is handing this waiter a device.
        PERFORM 1 FROM devalloc.waiters WHERE id = w.id FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        RETURN QUERY SELECT * FROM devalloc.grant_to_waiter(w, v_devices);
    END LOOP;
END
$function$;
COMMENT ON FUNCTION devalloc.dispatch(p_pool text) IS 'Serves the pool''s line from its idle devices, in order (ranked_at, seq), skipping waiters of dead instances; a group that cannot be served whole keeps the devices it fits from those behind it. Returns the leases granted.';

CREATE OR REPLACE FUNCTION devalloc.fencing_floor_keep()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO devalloc.fencing_floor AS f (name, token)
        SELECT d.name, d.fencing_token FROM devalloc.devices d
        ON CONFLICT (name) DO UPDATE SET token = greatest(f.token, EXCLUDED.token);
        RETURN NULL;
    END IF;
    INSERT INTO devalloc.fencing_floor AS f (name, token) VALUES (OLD.name, OLD.fencing_token)
    ON CONFLICT (name) DO UPDATE SET token = greatest(f.token, EXCLUDED.token);
    RETURN NULL;
END
$function$;
COMMENT ON FUNCTION devalloc.fencing_floor_keep() IS 'Trigger: records the fencing token a deleted (or truncated) device reached as its name''s floor.';

CREATE OR REPLACE FUNCTION devalloc.fencing_floor_never_lowers()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    RAISE EXCEPTION 'devalloc: the fencing floor of device name % may not go down or go away', OLD.name
        USING ERRCODE = 'check_violation', HINT = 'A device registered again under this name would reuse fencing tokens.';
END
$function$;
COMMENT ON FUNCTION devalloc.fencing_floor_never_lowers() IS 'Trigger: refuses lowering, renaming or removing a fencing floor.';

CREATE OR REPLACE FUNCTION devalloc.fencing_token_from_floor()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    -- greatest() ignores the NULL of a name never deleted.
    NEW.fencing_token := greatest(NEW.fencing_token,
                                  (SELECT f.token FROM devalloc.fencing_floor f WHERE f.name = NEW.name));
    RETURN NEW;
END
$function$;
COMMENT ON FUNCTION devalloc.fencing_token_from_floor() IS 'Trigger: a device registered under a name that was deleted before starts at that name''s fencing floor.';

CREATE OR REPLACE FUNCTION devalloc.fencing_token_never_lowers()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_floor bigint;
BEGIN
    IF NEW.fencing_token < OLD.fencing_token THEN
        RAISE EXCEPTION 'devalloc: the fencing token of device % may not go down (% to %)',
            OLD.name, OLD.fencing_token, NEW.fencing_token
            USING ERRCODE = 'check_violation', HINT = 'Fencing tokens only grow; a holder compares them to tell a newer lease.';
    END IF;
    IF NEW.name IS DISTINCT FROM OLD.name THEN
        -- Renamed: the old name keeps its floor, and the device continues
        -- above the floor of its new name.
        INSERT INTO devalloc.fencing_floor AS f (name, token) VALUES (OLD.name, OLD.fencing_token)
        ON CONFLICT (name) DO UPDATE SET token = greatest(f.token, EXCLUDED.token);
        SELECT f.token INTO v_floor FROM devalloc.fencing_floor f WHERE f.name = NEW.name;
        IF v_floor > NEW.fencing_token THEN
            IF NEW.state = 'leased' THEN
                -- Its lease carries the token: raising it would break the
                -- lease's match, keeping it would lower the name's tokens.
                RAISE EXCEPTION 'devalloc: a leased device may not take the name % (its tokens reached %, the device''s is %)',
                    NEW.name, v_floor, NEW.fencing_token
                    USING ERRCODE = 'check_violation', HINT = 'Rename it once its lease has ended.';
            END IF;
            NEW.fencing_token := v_floor;
        END IF;
    END IF;
    RETURN NEW;
END
$function$;
COMMENT ON FUNCTION devalloc.fencing_token_never_lowers() IS 'Trigger: refuses a lower fencing token on a device; on a rename, keeps the old name''s floor and continues above the new name''s.';

CREATE OR REPLACE FUNCTION devalloc.first_in_line(p_pool text, p_labels jsonb)
 RETURNS SETOF devalloc.waiters
 LANGUAGE plpgsql
 ROWS 1
AS $function$
DECLARE
    w devalloc.waiters;
BEGIN
    -- A loop over a cursor, so the line is read in index order and only
    -- as far as the first waiter that fits, whatever the statistics of this
    -- busy little table say.
    FOR w IN SELECT * FROM devalloc.waiters WHERE pool = p_pool ORDER BY ranked_at, seq LOOP
        CONTINUE WHEN NOT p_labels @> w.labels;
        CONTINUE WHEN NOT devalloc.instance_alive(w.instance_id);
        IF w.count > 1 THEN
            RETURN; -- a group is first: only the dispatcher may serve it
        END IF;
        -- Its key being granted elsewhere right now (busy), or already
        -- granted (taken): its retry has, or is getting, its lease. The
        -- claim comes before the row lock, so a skipped waiter is not left
        -- locked against its own cancel until this transaction ends.
        CONTINUE WHEN devalloc.claim_idempotency_key(w.owner, w.idempotency_key) <> 'free';
        -- Locked: another transaction is serving (or cancelling) it.
        PERFORM 1 FROM devalloc.waiters WHERE id = w.id FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        RETURN NEXT w;
        RETURN;
    END LOOP;
END
$function$;
COMMENT ON FUNCTION devalloc.first_in_line(p_pool text, p_labels jsonb) IS 'The first live waiter of the pool''s line that a device with these labels fits, locked for the caller to serve (its idempotency key, if any, claimed: see devalloc.claim_idempotency_key); none when nobody fits or a group is first (the dispatcher serves groups).';

CREATE OR REPLACE FUNCTION devalloc.grant_to_waiter(w devalloc.waiters, p_devices bigint[])
 RETURNS SETOF devalloc.leases
 LANGUAGE plpgsql
 ROWS 1
AS $function$
DECLARE
    v_group  uuid := CASE WHEN cardinality(p_devices) > 1 THEN gen_random_uuid() END;
    v_now    timestamptz := clock_timestamp();
    v_device bigint;
    v_lease  uuid;
    v_first  boolean := true;
    v_claim  text := devalloc.claim_idempotency_key(w.owner, w.idempotency_key);
BEGIN
    IF v_claim = 'busy' THEN
        -- A retry of this request is being granted by another transaction
        -- right now: this waiter stays in line, the devices stay idle. If
        -- that grant commits, the waiter is dropped when next reached.
        RETURN;
    END IF;
    IF v_claim = 'taken' THEN
        -- A retry of this request already got its lease (at another
        -- instance); the waiter leaves empty-handed and replays that one.
        DELETE FROM devalloc.waiters WHERE id = w.id;
        RETURN;
    END IF;
    FOREACH v_device IN ARRAY p_devices LOOP
        v_lease := gen_random_uuid();
        UPDATE devalloc.devices SET
            state = 'leased', state_reason = '', lease_id = v_lease,
            fencing_token = fencing_token + 1, updated_at = now()
        WHERE id = v_device AND state = 'idle';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'devalloc: device % is not idle at handoff', v_device;
        END IF;
        RETURN QUERY
        INSERT INTO devalloc.leases (id, device_id, device_name, pool, owner, holder, fencing_token, acquired_at, expires_at,
                                     idempotency_key, request_fingerprint, group_id, waiter_id, handoff_pending)
        SELECT v_lease, d.id, d.name, d.pool, w.owner, w.holder, d.fencing_token, v_now,
               v_now + make_interval(secs => w.ttl_seconds),
               CASE WHEN v_first THEN w.idempotency_key END, CASE WHEN v_first THEN w.request_fingerprint END,
               v_group, w.id, w.probes_handoff
        FROM devalloc.devices d WHERE d.id = v_device
        RETURNING *;
        v_first := false;
    END LOOP;
    DELETE FROM devalloc.waiters WHERE id = w.id;
    -- Tell the waiter's instance, with everything its answer needs, at
    -- commit (devalloc.notify_served, as the release statement does).
    PERFORM devalloc.notify_served(w.instance_id, w.id,
        (SELECT json_agg(devalloc.served_lease(l.id, l.device_id, l.device_name, l.pool, l.owner, l.holder,
                                               l.fencing_token, l.acquired_at, l.expires_at, l.group_id,
                                               d.labels, d.address, d.probe) ORDER BY l.device_name)
         FROM devalloc.leases l JOIN devalloc.devices d ON d.id = l.device_id
         WHERE l.waiter_id = w.id AND l.released_at IS NULL));
END
$function$;
COMMENT ON FUNCTION devalloc.grant_to_waiter(w devalloc.waiters, p_devices bigint[]) IS 'Leases the given idle devices (locked by the caller) to the waiter, removes it from the line and notifies its instance (channel devalloc_served_<instance id>) with {served: waiter id, leases: [...]} at commit; one group when more than one device. A keyed waiter is claimed first (devalloc.claim_idempotency_key): left in line when its key is being granted elsewhere, removed without a lease when its key already has one. The leases are handoff_pending when the waiter''s instance probes them first (waiters.probes_handoff): a retry does not replay them until devalloc.confirm_handoff.';

CREATE OR REPLACE FUNCTION devalloc.hand_off(p_device bigint)
 RETURNS SETOF devalloc.leases
 LANGUAGE plpgsql
 ROWS 1
AS $function$
DECLARE
    d devalloc.devices;
    w devalloc.waiters;
BEGIN
    -- Called by the statement that just made the device idle (a recovery);
    -- as a VOLATILE function it sees that change.
    SELECT * INTO d FROM devalloc.devices WHERE id = p_device AND state = 'idle' FOR UPDATE;
    IF NOT FOUND OR NOT EXISTS (SELECT 1 FROM devalloc.waiters WHERE pool = d.pool) THEN
        RETURN;
    END IF;
    SELECT * INTO w FROM devalloc.first_in_line(d.pool, d.labels);
    IF w.id IS NOT NULL THEN
        RETURN QUERY SELECT * FROM devalloc.grant_to_waiter(w, ARRAY[p_device]);
    ELSIF EXISTS (SELECT 1 FROM devalloc.waiters g WHERE g.pool = d.pool AND g.count > 1 AND d.labels @> g.labels) THEN
        -- A group is first in line for this device: only the pool's
        -- dispatcher may gather it the rest.
        RETURN QUERY SELECT * FROM devalloc.dispatch(d.pool);
    END IF;
END
$function$;
COMMENT ON FUNCTION devalloc.hand_off(p_device bigint) IS 'Gives a device that just became idle to the first live waiter in line it fits, in the caller''s transaction. Returns the leases granted (none: the device stays idle).';

CREATE OR REPLACE FUNCTION devalloc.idempotency_key_taken(p_owner text, p_key text)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF p_key IS NULL THEN
        RETURN false;
    END IF;
    PERFORM devalloc.lock_idempotency_key(p_owner, p_key);
    -- A statement of its own, after the lock: under READ COMMITTED its
    -- snapshot sees the lease of a grant committed by the lock's previous
    -- holder.
    RETURN EXISTS (SELECT 1 FROM devalloc.leases l WHERE l.owner = p_owner AND l.idempotency_key = p_key);
END
$function$;
COMMENT ON FUNCTION devalloc.idempotency_key_taken(p_owner text, p_key text) IS 'Whether a lease has the owner''s key, looked for under the key''s advisory lock (devalloc.lock_idempotency_key).';

CREATE OR REPLACE FUNCTION devalloc.instance_alive(p_instance bigint)
 RETURNS boolean
 LANGUAGE sql
AS $function$
    -- Heartbeat first: a silent instance never takes the shared lock
    -- (which would be held until the caller's commit). Then the lock: the
    -- instance's listener holds it exclusively; a shared try succeeds only
    -- when nobody does (and is released at commit). clock_timestamp(), not
    -- now(): a statement that waited on a lock judges by the time it looks.
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM devalloc.instances i
                     WHERE i.id = p_instance AND i.seen_at >= clock_timestamp() - i.silent_after)
        THEN NOT pg_try_advisory_xact_lock_shared(1685482609, p_instance::int4)
        ELSE false
    END
$function$;
COMMENT ON FUNCTION devalloc.instance_alive(p_instance bigint) IS 'Whether the instance can answer its waiters: its listener session holds advisory lock (1685482609, id) and its last heartbeat (seen_at) is younger than its silent_after, 3 x its heartbeat interval (30 s with the default 10 s). A crashed host whose session the server still keeps is dead for the line once that bound has passed.';

CREATE OR REPLACE FUNCTION devalloc.lock_idempotency_key(p_owner text, p_key text)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF p_key IS NOT NULL THEN
        -- Waits: a direct grant or a join may queue behind a grant from
        -- the line (one statement), never the other way round (the line
        -- only tries, see devalloc.claim_idempotency_key).
        PERFORM pg_advisory_xact_lock(1685482611, hashtext(p_owner || chr(31) || p_key));
    END IF;
    RETURN true;
END
$function$;
COMMENT ON FUNCTION devalloc.lock_idempotency_key(p_owner text, p_key text) IS 'Takes the key''s advisory lock (1685482611, hashtext(owner || chr(31) || key)) to the end of the transaction, waiting for whoever holds it (a grant from the line); true. No key: true at once.';

CREATE OR REPLACE FUNCTION devalloc.notify_idle()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    payload text;
BEGIN
    IF current_setting('devalloc.notify_by_caller', true) = 'on' THEN
        RETURN NULL;
    END IF;
    payload := json_build_object('pool', NEW.pool, 'device', NEW.id, 'labels', NEW.labels)::text;
    -- NOTIFY payloads are capped at 8000 bytes; with outsized labels the
    -- listener gets only the pool and wakes one waiter per selector there.
    IF octet_length(payload) > devalloc.notify_payload_limit() THEN
        payload := json_build_object('pool', NEW.pool, 'device', NEW.id)::text;
    END IF;
    -- The device id keeps payloads distinct: PostgreSQL folds identical
    -- notifications of one transaction into one, which would wake one waiter
    -- for two freed devices.
    PERFORM pg_notify('devalloc_idle', payload);
    RETURN NULL;
END
$function$;
COMMENT ON FUNCTION devalloc.notify_idle() IS 'Trigger: NOTIFY devalloc_idle with {pool, device, labels} when a device becomes idle, unless the transaction set devalloc.notify_by_caller = on (devalloc''s release and expiry: the instance notifies after commit, in batches).';

CREATE OR REPLACE FUNCTION devalloc.notify_payload_limit()
 RETURNS integer
 LANGUAGE sql
 IMMUTABLE
AS $function$
    -- PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
    SELECT 7900
$function$;
COMMENT ON FUNCTION devalloc.notify_payload_limit() IS 'The largest NOTIFY payload devalloc sends (bytes; PostgreSQL refuses 8000 or more): a larger one is sent without its details (labels, leases) and the listener reads them.';

CREATE OR REPLACE FUNCTION devalloc.notify_served(p_instance bigint, p_waiter uuid, p_leases json)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_payload text := json_build_object('served', p_waiter, 'leases', p_leases)::text;
BEGIN
    -- Outsized (huge labels, big groups): the waiter's id alone, and its
    -- instance reads the leases.
    IF octet_length(v_payload) > devalloc.notify_payload_limit() THEN
        v_payload := json_build_object('served', p_waiter)::text;
    END IF;
    -- Only the waiter's instance listens on its own channel.
    PERFORM pg_notify('devalloc_served_' || p_instance, v_payload);
END
$function$;
COMMENT ON FUNCTION devalloc.notify_served(p_instance bigint, p_waiter uuid, p_leases json) IS 'Tells instance p_instance, at commit, that its waiter p_waiter was handed p_leases (devalloc.served_lease entries): {served, leases} on channel devalloc_served_<instance>, or {served} alone when that would exceed devalloc.notify_payload_limit().';

CREATE OR REPLACE FUNCTION devalloc.pending_group_ends()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    -- The group's key rides on its first lease, which may still be
    -- pending and active: the group as a whole is no answer now.
    UPDATE devalloc.leases l SET given_up_idempotency_key = l.idempotency_key, idempotency_key = NULL
    WHERE l.group_id = NEW.group_id AND l.idempotency_key IS NOT NULL AND l.handoff_pending;
    RETURN NULL;
END
$function$;
COMMENT ON FUNCTION devalloc.pending_group_ends() IS 'Trigger: a pending lease of a group that ends takes the group''s idempotency key off its still pending first lease.';

CREATE OR REPLACE FUNCTION devalloc.pending_handoff_ends()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    -- Whatever ends it (probe_failed, given back, revoked, reaped), an
    -- unconfirmed handoff was nobody's answer: no retry replays it.
    NEW.handoff_pending := false;
    NEW.given_up_idempotency_key := coalesce(NEW.idempotency_key, NEW.given_up_idempotency_key);
    NEW.idempotency_key := NULL;
    RETURN NEW;
END
$function$;
COMMENT ON FUNCTION devalloc.pending_handoff_ends() IS 'Trigger: a handoff_pending lease that ends is no longer pending and gives its idempotency key up.';

CREATE OR REPLACE FUNCTION devalloc.pick_idle_device(p_pool text, p_labels jsonb)
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
DECLARE
    picked bigint;
BEGIN
    IF p_labels = '{}'::jsonb THEN
        -- Any device of the pool: the front of the idle line.
        SELECT d.id INTO picked FROM devalloc.devices d
        WHERE d.state = 'idle' AND d.pool = p_pool
        ORDER BY d.idle_since, d.id
        LIMIT 1
        FOR UPDATE SKIP LOCKED;
        RETURN picked;
    END IF;
    -- A fitting device among the first 64 of the line.
    SELECT d.id INTO picked FROM devalloc.devices d
    WHERE d.id IN (
            SELECT head.id FROM (
                SELECT h.id, h.labels FROM devalloc.devices h
                WHERE h.state = 'idle' AND h.pool = p_pool
                ORDER BY h.idle_since, h.id
                LIMIT 64
            ) head
            WHERE head.labels @> p_labels)
      AND d.state = 'idle' AND d.pool = p_pool AND d.labels @> p_labels
    ORDER BY d.idle_since, d.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    IF picked IS NOT NULL THEN
        RETURN picked;
    END IF;
    -- Behind them: through the label index, in idle order (the
    -- "+ interval '0'" keeps the planner from walking the idle line
    -- instead, which for a rare selector reads most of the pool).
    SELECT f.id INTO picked FROM devalloc.devices f
    WHERE f.state = 'idle' AND f.pool = p_pool AND f.labels @> p_labels
    ORDER BY f.idle_since + interval '0', f.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    RETURN picked;
END
$function$;
COMMENT ON FUNCTION devalloc.pick_idle_device(p_pool text, p_labels jsonb) IS 'Locks (FOR UPDATE SKIP LOCKED) and returns the id of the least recently released idle device of the pool whose labels contain p_labels, or NULL. Reads the first 64 idle devices of the pool and, when none of those fits and is free, the fitting ones through the label index.';

CREATE OR REPLACE FUNCTION devalloc.record_device_event()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    INSERT INTO devalloc.device_events (device_id, device, pool, from_state, to_state, reason)
    VALUES (NEW.id, NEW.name, NEW.pool, OLD.state, NEW.state, NEW.state_reason);
    RETURN NULL;
END
$function$;
COMMENT ON FUNCTION devalloc.record_device_event() IS 'Trigger: records a device''s change into or out of offline or maintenance in devalloc.device_events.';

CREATE OR REPLACE FUNCTION devalloc.served_lease(p_id uuid, p_device_id bigint, p_device_name text, p_pool text, p_owner text, p_holder text, p_fencing_token bigint, p_acquired_at timestamp with time zone, p_expires_at timestamp with time zone, p_group_id uuid, p_labels jsonb, p_address text, p_probe text)
 RETURNS json
 LANGUAGE sql
 STABLE
AS $function$
    SELECT json_build_object(
        'id', p_id, 'device_id', p_device_id, 'device_name', p_device_name, 'pool', p_pool,
        'owner', p_owner, 'holder', p_holder, 'fencing_token', p_fencing_token,
        'acquired_at', p_acquired_at, 'expires_at', p_expires_at, 'group_id', p_group_id,
        'labels', p_labels, 'address', p_address, 'probe', p_probe)
$function$;
COMMENT ON FUNCTION devalloc.served_lease(p_id uuid, p_device_id bigint, p_device_name text, p_pool text, p_owner text, p_holder text, p_fencing_token bigint, p_acquired_at timestamp with time zone, p_expires_at timestamp with time zone, p_group_id uuid, p_labels jsonb, p_address text, p_probe text) IS 'One lease of a served notice: what the waiter''s answer needs of the lease and of its device (db/wake/served.go reads it).';

CREATE OR REPLACE FUNCTION devalloc.tell_twins()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    t record;
BEGIN
    -- The key's lock is held here: a grant from the line claimed it, a
    -- direct grant locked it before its insert. A join waits for it, so no
    -- twin row can appear unseen. A twin's row may be locked a moment by
    -- a release or dispatch looking at it (first_in_line locks a candidate
    -- before it tries the key's claim, which fails while this transaction
    -- holds it, and passes over the row): the DELETE waits for that short
    -- transaction, and nobody else can serve the row meanwhile.
    FOR t IN DELETE FROM devalloc.waiters w
             WHERE w.owner = NEW.owner AND w.idempotency_key = NEW.idempotency_key
               AND w.id IS DISTINCT FROM NEW.waiter_id
             RETURNING w.id, w.instance_id LOOP
        PERFORM pg_notify('devalloc_served_' || t.instance_id,
                          json_build_object('served', t.id, 'key_has_lease', NEW.id)::text);
    END LOOP;
    RETURN NULL;
END
$function$;
COMMENT ON FUNCTION devalloc.tell_twins() IS 'A keyed lease was granted: the key''s other waiters leave the line and their instances are told ({served: waiter id, key_has_lease: lease id}, no leases) to answer with a replay at once.';

-- Views
-- -----

CREATE VIEW devalloc.active_leases AS
 SELECT l.id AS lease_id,
    d.name AS device,
    d.pool,
    d.address,
    l.owner,
    l.holder,
    l.fencing_token,
    l.acquired_at,
    l.expires_at,
    l.expires_at - now() AS expires_in,
    l.handoff_pending
   FROM devalloc.leases l
     JOIN devalloc.devices d ON d.id = l.device_id
  WHERE l.released_at IS NULL;
COMMENT ON VIEW devalloc.active_leases IS 'Leases in force now, with their device and owner; expires_in is negative for a lapsed lease the reaper has not ended yet; handoff_pending: handed from the line, its waiter is still probing the device (not yet anybody''s answer).';

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

CREATE VIEW devalloc.pool_summary AS
 WITH live AS (
         SELECT i.id
           FROM devalloc.instances i
          WHERE devalloc.instance_alive(i.id)
        ), line AS (
         SELECT w.pool,
            count(*) AS waiting,
            min(w.enqueued_at) AS oldest
           FROM devalloc.waiters w
             JOIN live ON live.id = w.instance_id
          GROUP BY w.pool
        )
 SELECT d.pool,
    count(*) AS devices,
    count(*) FILTER (WHERE d.state = 'idle'::text) AS idle,
    count(*) FILTER (WHERE d.state = 'leased'::text) AS leased,
    count(*) FILTER (WHERE d.state = 'offline'::text) AS offline,
    count(*) FILTER (WHERE d.state = 'maintenance'::text) AS maintenance,
    COALESCE(max(line.waiting), 0::bigint) AS waiting,
    now() - min(line.oldest) AS oldest_wait
   FROM devalloc.devices d
     LEFT JOIN line ON line.pool = d.pool
  GROUP BY d.pool;
COMMENT ON VIEW devalloc.pool_summary IS 'Devices per pool by state, the queue depth (waiting, across all live instances) and the oldest wait.';

CREATE VIEW devalloc.queue AS
 WITH live AS (
         SELECT i_1.id
           FROM devalloc.instances i_1
          WHERE devalloc.instance_alive(i_1.id)
        )
 SELECT w.pool,
    row_number() OVER (PARTITION BY w.pool ORDER BY w.ranked_at, w.seq) AS "position",
    w.id AS waiter_id,
    w.owner,
    w.holder,
    w.labels,
    w.count,
    w.priority,
    w.enqueued_at,
    w.ranked_at,
    now() - w.enqueued_at AS waited,
    i.name AS instance
   FROM devalloc.waiters w
     JOIN live ON live.id = w.instance_id
     JOIN devalloc.instances i ON i.id = w.instance_id;
COMMENT ON VIEW devalloc.queue IS 'The line of every pool in serving order: position 1 is served first when a device it fits is free. Waiters of instances that are not alive (listener session gone, or no heartbeat for 3 intervals) are left out: the line skips them, and their rows are removed with their instance.';

-- Triggers
-- --------

CREATE TRIGGER devices_fencing_floor_on_delete AFTER DELETE ON devalloc.devices FOR EACH ROW EXECUTE FUNCTION devalloc.fencing_floor_keep();
COMMENT ON TRIGGER devices_fencing_floor_on_delete ON devalloc.devices IS 'A deleted device leaves its fencing token as its name''s floor.';

CREATE TRIGGER devices_fencing_floor_on_truncate BEFORE TRUNCATE ON devalloc.devices FOR EACH STATEMENT EXECUTE FUNCTION devalloc.fencing_floor_keep();
COMMENT ON TRIGGER devices_fencing_floor_on_truncate ON devalloc.devices IS 'A truncate leaves every device''s fencing token as its name''s floor.';

CREATE TRIGGER devices_fencing_token_from_floor BEFORE INSERT ON devalloc.devices FOR EACH ROW EXECUTE FUNCTION devalloc.fencing_token_from_floor();
COMMENT ON TRIGGER devices_fencing_token_from_floor ON devalloc.devices IS 'A device registered again under a deleted name starts at the name''s fencing floor.';

CREATE TRIGGER devices_fencing_token_grows BEFORE UPDATE OF fencing_token, name ON devalloc.devices FOR EACH ROW WHEN (new.fencing_token < old.fencing_token OR new.name IS DISTINCT FROM old.name) EXECUTE FUNCTION devalloc.fencing_token_never_lowers();
COMMENT ON TRIGGER devices_fencing_token_grows ON devalloc.devices IS 'A device''s fencing token never goes down; a rename continues above the new name''s floor.';

CREATE TRIGGER devices_notify_idle_insert AFTER INSERT ON devalloc.devices FOR EACH ROW WHEN (new.state = 'idle'::text) EXECUTE FUNCTION devalloc.notify_idle();

CREATE TRIGGER devices_notify_idle_update AFTER UPDATE OF state ON devalloc.devices FOR EACH ROW WHEN (new.state = 'idle'::text AND old.state <> 'idle'::text) EXECUTE FUNCTION devalloc.notify_idle();

CREATE TRIGGER devices_record_event AFTER UPDATE OF state ON devalloc.devices FOR EACH ROW WHEN (old.state IS DISTINCT FROM new.state AND ((old.state = ANY (ARRAY['offline'::text, 'maintenance'::text])) OR (new.state = ANY (ARRAY['offline'::text, 'maintenance'::text])))) EXECUTE FUNCTION devalloc.record_device_event();

CREATE TRIGGER fencing_floor_never_lowers BEFORE UPDATE ON devalloc.fencing_floor FOR EACH ROW WHEN (new.token < old.token OR new.name <> old.name) EXECUTE FUNCTION devalloc.fencing_floor_never_lowers();
COMMENT ON TRIGGER fencing_floor_never_lowers ON devalloc.fencing_floor IS 'A fencing floor never goes down nor changes name.';

CREATE TRIGGER fencing_floor_never_removed BEFORE DELETE ON devalloc.fencing_floor FOR EACH ROW EXECUTE FUNCTION devalloc.fencing_floor_never_lowers();
COMMENT ON TRIGGER fencing_floor_never_removed ON devalloc.fencing_floor IS 'A fencing floor is never removed.';

CREATE TRIGGER leases_pending_group_ends AFTER UPDATE OF released_at ON devalloc.leases FOR EACH ROW WHEN (old.handoff_pending AND new.released_at IS NOT NULL AND new.group_id IS NOT NULL) EXECUTE FUNCTION devalloc.pending_group_ends();

CREATE TRIGGER leases_pending_handoff_ends BEFORE UPDATE OF released_at ON devalloc.leases FOR EACH ROW WHEN (old.handoff_pending AND new.released_at IS NOT NULL) EXECUTE FUNCTION devalloc.pending_handoff_ends();

CREATE TRIGGER leases_tell_twins AFTER INSERT ON devalloc.leases FOR EACH ROW WHEN (new.idempotency_key IS NOT NULL) EXECUTE FUNCTION devalloc.tell_twins();
