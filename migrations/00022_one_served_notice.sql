-- +goose Up
-- The served notice in one place. A waiter's instance learns that it was
-- handed devices from a NOTIFY on its own channel, sent by two statements:
-- devalloc.grant_to_waiter (a dispatch) and the release statement's direct
-- handoff (queries/leases.sql, EndLease). Each built the payload itself
-- and cut it at 7900 bytes itself; now both call devalloc.notify_served
-- with entries from devalloc.served_lease, and every payload bound in SQL
-- is devalloc.notify_payload_limit() (db/wake's maxPayload is the same
-- number, checked by a test).

-- +goose StatementBegin
CREATE FUNCTION devalloc.notify_payload_limit() RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    -- PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
    SELECT 7900
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.notify_payload_limit() IS
    'The largest NOTIFY payload devalloc sends (bytes; PostgreSQL refuses 8000 or more): a larger one is sent without its details (labels, leases) and the listener reads them.';

-- STABLE, not IMMUTABLE: timestamps render in the session's TimeZone; and
-- only a function no more volatile than its body is inlined into the
-- statement that calls it (the release's handoff pays no call).
-- +goose StatementBegin
CREATE FUNCTION devalloc.served_lease(p_id uuid, p_device_id bigint, p_device_name text, p_pool text, p_owner text,
                                      p_holder text, p_fencing_token bigint, p_acquired_at timestamptz,
                                      p_expires_at timestamptz, p_group_id uuid, p_labels jsonb, p_address text,
                                      p_probe text)
RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', p_id, 'device_id', p_device_id, 'device_name', p_device_name, 'pool', p_pool,
        'owner', p_owner, 'holder', p_holder, 'fencing_token', p_fencing_token,
        'acquired_at', p_acquired_at, 'expires_at', p_expires_at, 'group_id', p_group_id,
        'labels', p_labels, 'address', p_address, 'probe', p_probe)
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.served_lease(uuid, bigint, text, text, text, text, bigint, timestamptz, timestamptz, uuid, jsonb, text, text) IS
    'One lease of a served notice: what the waiter''s answer needs of the lease and of its device (db/wake/served.go reads it).';

-- +goose StatementBegin
CREATE FUNCTION devalloc.notify_served(p_instance bigint, p_waiter uuid, p_leases json) RETURNS void LANGUAGE plpgsql AS $$
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
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.notify_served(bigint, uuid, json) IS
    'Tells instance p_instance, at commit, that its waiter p_waiter was handed p_leases (devalloc.served_lease entries): {served, leases} on channel devalloc_served_<instance>, or {served} alone when that would exceed devalloc.notify_payload_limit().';

-- +goose StatementBegin
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
$function$;;
-- +goose StatementEnd

-- +goose StatementBegin
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
$function$;;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
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
$function$;;
-- +goose StatementEnd

-- +goose StatementBegin
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
    IF octet_length(payload) > 7900 THEN
        payload := json_build_object('pool', NEW.pool, 'device', NEW.id)::text;
    END IF;
    -- The device id keeps payloads distinct: PostgreSQL folds identical
    -- notifications of one transaction into one, which would wake one waiter
    -- for two freed devices.
    PERFORM pg_notify('devalloc_idle', payload);
    RETURN NULL;
END
$function$;;
-- +goose StatementEnd

DROP FUNCTION devalloc.notify_served(bigint, uuid, json);
DROP FUNCTION devalloc.served_lease(uuid, bigint, text, text, text, text, bigint, timestamptz, timestamptz, uuid, jsonb, text, text);
DROP FUNCTION devalloc.notify_payload_limit();
