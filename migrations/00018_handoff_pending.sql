-- +goose Up
-- A handoff under probe is not an answer yet (issue 12, finding H2).
--
-- A device handed from the line to a waiter whose instance probes it
-- first (Config.ProbeOnHandoff) is not the client's until the probe
-- passed: if it fails, the lease ends as probe_failed, or for a group the
-- other leases are given back, and the waiter goes back in line. A retry
-- of the same keyed request meanwhile found the lease by its key and
-- answered 201 with it: a client told it holds a device that is taken
-- back a moment later. Now such a lease is inserted handoff_pending; the
-- waiter confirms it (devalloc.confirm_handoff) before answering, and a
-- replay waits for that (db/idempotency.go) rather than answer with it.
-- A pending lease that ends unconfirmed (probe failed, given back,
-- revoked, expired) gives its key up like a probe_failed one (00015), for
-- itself and the keyed first lease of its group: it never was anybody's
-- answer, so no retry may be answered with it.

ALTER TABLE devalloc.leases ADD COLUMN handoff_pending boolean NOT NULL DEFAULT false;
ALTER TABLE devalloc.leases ADD CONSTRAINT leases_pending_only_active
    CHECK (NOT handoff_pending OR released_at IS NULL);
COMMENT ON COLUMN devalloc.leases.handoff_pending IS
    'Handed from the line to a waiter whose instance is probing the device before answering: not an answer to a retry yet. '
    'Cleared by devalloc.confirm_handoff (the waiter answers with it) or when the lease ends (then its key is given up).';
COMMENT ON CONSTRAINT leases_pending_only_active ON devalloc.leases IS 'Only an active lease can await its handoff''s confirmation.';

ALTER TABLE devalloc.waiters ADD COLUMN probes_handoff boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN devalloc.waiters.probes_handoff IS
    'The waiter''s instance probes devices handed to it before answering (Config.ProbeOnHandoff): its leases start handoff_pending.';

-- +goose StatementBegin
CREATE FUNCTION devalloc.pending_handoff_ends() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Whatever ends it (probe_failed, given back, revoked, reaped), an
    -- unconfirmed handoff was nobody's answer: no retry replays it.
    NEW.handoff_pending := false;
    NEW.given_up_idempotency_key := coalesce(NEW.idempotency_key, NEW.given_up_idempotency_key);
    NEW.idempotency_key := NULL;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.pending_handoff_ends() IS 'Trigger: a handoff_pending lease that ends is no longer pending and gives its idempotency key up.';
CREATE TRIGGER leases_pending_handoff_ends BEFORE UPDATE OF released_at ON devalloc.leases
    FOR EACH ROW WHEN (OLD.handoff_pending AND NEW.released_at IS NOT NULL)
    EXECUTE FUNCTION devalloc.pending_handoff_ends();

-- +goose StatementBegin
CREATE FUNCTION devalloc.pending_group_ends() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The group's key rides on its first lease, which may still be
    -- pending and active: the group as a whole is no answer now.
    UPDATE devalloc.leases l SET given_up_idempotency_key = l.idempotency_key, idempotency_key = NULL
    WHERE l.group_id = NEW.group_id AND l.idempotency_key IS NOT NULL AND l.handoff_pending;
    RETURN NULL;
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.pending_group_ends() IS 'Trigger: a pending lease of a group that ends takes the group''s idempotency key off its still pending first lease.';
CREATE TRIGGER leases_pending_group_ends AFTER UPDATE OF released_at ON devalloc.leases
    FOR EACH ROW WHEN (OLD.handoff_pending AND NEW.released_at IS NOT NULL AND NEW.group_id IS NOT NULL)
    EXECUTE FUNCTION devalloc.pending_group_ends();

-- +goose StatementBegin
CREATE FUNCTION devalloc.confirm_handoff(p_leases uuid[]) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
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
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.confirm_handoff(uuid[]) IS
    'The waiter''s probe passed: clears handoff_pending on the given leases, which are its answer now, and returns true; '
    'false (nothing changed) when any of them ended before (they are no answer: the waiter gives the rest back).';

CREATE OR REPLACE VIEW devalloc.active_leases AS
SELECT l.id          AS lease_id,
       d.name        AS device,
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

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION devalloc.grant_to_waiter(w devalloc.waiters, p_devices bigint[]) RETURNS SETOF devalloc.leases
LANGUAGE plpgsql ROWS 1 AS $$
DECLARE
    v_group  uuid := CASE WHEN cardinality(p_devices) > 1 THEN gen_random_uuid() END;
    v_now    timestamptz := clock_timestamp();
    v_device bigint;
    v_lease  uuid;
    v_first  boolean := true;
    v_payload text;
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
    -- commit: no second round trip after this one commit, and nothing to
    -- read back. Outsized (huge labels, big groups): the id alone, and the
    -- instance reads the leases. The release statement (queries/leases.sql,
    -- EndLease) hands over a device in plain SQL for speed and sends the
    -- same notice: change both together.
    SELECT json_build_object('served', w.id, 'leases', json_agg(json_build_object(
               'id', l.id, 'device_id', l.device_id, 'device_name', l.device_name, 'pool', l.pool,
               'owner', l.owner, 'holder', l.holder, 'fencing_token', l.fencing_token,
               'acquired_at', l.acquired_at, 'expires_at', l.expires_at, 'group_id', l.group_id,
               'labels', d.labels, 'address', d.address, 'probe', d.probe) ORDER BY l.device_name))::text
    INTO v_payload
    FROM devalloc.leases l JOIN devalloc.devices d ON d.id = l.device_id
    WHERE l.waiter_id = w.id AND l.released_at IS NULL;
    IF octet_length(v_payload) > 7900 THEN
        v_payload := json_build_object('served', w.id)::text;
    END IF;
    -- Only the waiter's instance listens on its own channel.
    PERFORM pg_notify('devalloc_served_' || w.instance_id, v_payload);
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.grant_to_waiter(devalloc.waiters, bigint[]) IS
    'Leases the given idle devices (locked by the caller) to the waiter, removes it from the line and notifies its instance '
    '(channel devalloc_served_<instance id>) with {served: waiter id, leases: [...]} at commit; one group when more than one device. '
    'A keyed waiter is claimed first (devalloc.claim_idempotency_key): left in line when its key is being granted elsewhere, '
    'removed without a lease when its key already has one. The leases are handoff_pending when the waiter''s instance '
    'probes them first (waiters.probes_handoff): a retry does not replay them until devalloc.confirm_handoff.';

-- +goose Down
DROP VIEW devalloc.active_leases;
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

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION devalloc.grant_to_waiter(w devalloc.waiters, p_devices bigint[]) RETURNS SETOF devalloc.leases
LANGUAGE plpgsql ROWS 1 AS $$
DECLARE
    v_group  uuid := CASE WHEN cardinality(p_devices) > 1 THEN gen_random_uuid() END;
    v_now    timestamptz := clock_timestamp();
    v_device bigint;
    v_lease  uuid;
    v_first  boolean := true;
    v_payload text;
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
                                     idempotency_key, request_fingerprint, group_id, waiter_id)
        SELECT v_lease, d.id, d.name, d.pool, w.owner, w.holder, d.fencing_token, v_now,
               v_now + make_interval(secs => w.ttl_seconds),
               CASE WHEN v_first THEN w.idempotency_key END, CASE WHEN v_first THEN w.request_fingerprint END,
               v_group, w.id
        FROM devalloc.devices d WHERE d.id = v_device
        RETURNING *;
        v_first := false;
    END LOOP;
    DELETE FROM devalloc.waiters WHERE id = w.id;
    -- Tell the waiter's instance, with everything its answer needs, at
    -- commit: no second round trip after this one commit, and nothing to
    -- read back. Outsized (huge labels, big groups): the id alone, and the
    -- instance reads the leases. The release statement (queries/leases.sql,
    -- EndLease) hands over a device in plain SQL for speed and sends the
    -- same notice: change both together.
    SELECT json_build_object('served', w.id, 'leases', json_agg(json_build_object(
               'id', l.id, 'device_id', l.device_id, 'device_name', l.device_name, 'pool', l.pool,
               'owner', l.owner, 'holder', l.holder, 'fencing_token', l.fencing_token,
               'acquired_at', l.acquired_at, 'expires_at', l.expires_at, 'group_id', l.group_id,
               'labels', d.labels, 'address', d.address, 'probe', d.probe) ORDER BY l.device_name))::text
    INTO v_payload
    FROM devalloc.leases l JOIN devalloc.devices d ON d.id = l.device_id
    WHERE l.waiter_id = w.id AND l.released_at IS NULL;
    IF octet_length(v_payload) > 7900 THEN
        v_payload := json_build_object('served', w.id)::text;
    END IF;
    -- Only the waiter's instance listens on its own channel.
    PERFORM pg_notify('devalloc_served_' || w.instance_id, v_payload);
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.grant_to_waiter(devalloc.waiters, bigint[]) IS
    'Leases the given idle devices (locked by the caller) to the waiter, removes it from the line and notifies its instance '
    '(channel devalloc_served_<instance id>) with {served: waiter id, leases: [...]} at commit; one group when more than one device. '
    'A keyed waiter is claimed first (devalloc.claim_idempotency_key): left in line when its key is being granted elsewhere, '
    'removed without a lease when its key already has one.';

DROP FUNCTION devalloc.confirm_handoff(uuid[]);
DROP TRIGGER leases_pending_group_ends ON devalloc.leases;
DROP FUNCTION devalloc.pending_group_ends();
DROP TRIGGER leases_pending_handoff_ends ON devalloc.leases;
DROP FUNCTION devalloc.pending_handoff_ends();
ALTER TABLE devalloc.waiters DROP COLUMN probes_handoff;
ALTER TABLE devalloc.leases DROP CONSTRAINT leases_pending_only_active;
ALTER TABLE devalloc.leases DROP COLUMN handoff_pending;
