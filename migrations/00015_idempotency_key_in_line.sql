-- +goose Up
-- An idempotency key in the line (issue 12, defects 2 and 4).
--
-- 1. A handoff given back (a device handed over from the line failed its
--    probe) gives its key up: the lease that failed, and the keyed first
--    lease of its group, move the key to given_up_idempotency_key in the
--    statement that ends them (queries/queue.sql, FailHandedLease). Until
--    now the key stayed on the dead lease, so the waiter, back in line with
--    that key, was dropped as "the key already has a lease" and replayed
--    the dead lease as a success.
-- 2. Granting a key from the line is serialised per (owner, key): retries
--    of one request may wait at several instances, and two transactions
--    handing each a device both saw "no lease has the key" (READ
--    COMMITTED), the second then failing its whole statement (a release!)
--    on the unique index. Now the grant takes a transaction advisory
--    try-lock on the key first (devalloc.claim_idempotency_key): a waiter
--    whose key another transaction is granting right now is skipped, and
--    once the lock is held a fresh statement sees any grant committed by
--    its previous holder.

ALTER TABLE devalloc.leases ADD COLUMN given_up_idempotency_key text;
COMMENT ON COLUMN devalloc.leases.given_up_idempotency_key IS
    'The Idempotency-Key this lease carried until its handoff was given back (a device handed over from the line failed '
    'its probe; the waiter went back to its place with the key). Kept for audit only: a retry never replays this lease.';

-- Leases from before this migration: probe_failed ones and the keyed
-- first lease of their group give their key up now.
UPDATE devalloc.leases l SET given_up_idempotency_key = l.idempotency_key, idempotency_key = NULL
WHERE l.idempotency_key IS NOT NULL
  AND (l.end_reason = 'probe_failed'
       OR (l.group_id IS NOT NULL AND EXISTS (
               SELECT 1 FROM devalloc.leases f WHERE f.group_id = l.group_id AND f.end_reason = 'probe_failed')));

ALTER TABLE devalloc.leases ADD CONSTRAINT leases_probe_failed_keyless
    CHECK (end_reason IS DISTINCT FROM 'probe_failed' OR idempotency_key IS NULL);
COMMENT ON CONSTRAINT leases_probe_failed_keyless ON devalloc.leases IS
    'A lease that ended as probe_failed carries no idempotency key: a retry must never be answered with it.';

-- +goose StatementBegin
CREATE FUNCTION devalloc.claim_idempotency_key(p_owner text, p_key text) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
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
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.claim_idempotency_key(text, text) IS
    'Before granting a waiter with this key: free (no key, or no lease has it; the key''s advisory lock (1685482611, '
    'hashtext(owner || chr(31) || key)) is now held to commit), busy (another transaction is granting it now: skip the '
    'waiter) or taken (a lease has it: the waiter''s retry already got its lease).';

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

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION devalloc.first_in_line(p_pool text, p_labels jsonb) RETURNS SETOF devalloc.waiters
LANGUAGE plpgsql ROWS 1 AS $$
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
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.first_in_line(text, jsonb) IS
    'The first live waiter of the pool''s line that a device with these labels fits, locked for the caller to serve (its '
    'idempotency key, if any, claimed: see devalloc.claim_idempotency_key); none when nobody fits or a group is first (the '
    'dispatcher serves groups).';

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION devalloc.first_in_line(p_pool text, p_labels jsonb) RETURNS SETOF devalloc.waiters
LANGUAGE plpgsql ROWS 1 AS $$
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
        CONTINUE WHEN w.idempotency_key IS NOT NULL AND EXISTS (
            SELECT 1 FROM devalloc.leases l WHERE l.owner = w.owner AND l.idempotency_key = w.idempotency_key);
        -- Locked: another transaction is serving (or cancelling) it.
        PERFORM 1 FROM devalloc.waiters WHERE id = w.id FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        RETURN NEXT w;
        RETURN;
    END LOOP;
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.first_in_line(text, jsonb) IS
    'The first live waiter of the pool''s line that a device with these labels fits, locked for the caller to serve; '
    'none when nobody fits or a group is first (the dispatcher serves groups).';

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
BEGIN
    IF w.idempotency_key IS NOT NULL AND EXISTS (
        SELECT 1 FROM devalloc.leases l WHERE l.owner = w.owner AND l.idempotency_key = w.idempotency_key
    ) THEN
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
    '(channel devalloc_served_<instance id>) with {served: waiter id, leases: [...]} at commit; one group when more than one device.';

DROP FUNCTION devalloc.claim_idempotency_key(text, text);
ALTER TABLE devalloc.leases DROP CONSTRAINT leases_probe_failed_keyless;
-- The given-up keys are not put back: the waiter that gave one up may
-- have a live lease with that key now (the unique index), and putting it
-- back on the dead lease would bring the replay of a dead lease back.
ALTER TABLE devalloc.leases DROP COLUMN given_up_idempotency_key;
