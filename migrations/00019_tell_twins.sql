-- +goose Up
-- Twins: retries of one keyed acquire (same owner and idempotency key)
-- waiting in line at several instances (issue 12, finding F1). The key gets
-- one lease; every twin must be answered with it at once, not left in line
-- (holding the pool's line up) until its window closes, nor ever granted
-- something else.
--
-- 1. Whatever grants a keyed lease (a release's handoff, the dispatcher, a
--    direct grant without the line) removes the key's other rows from the
--    line in its own transaction and tells their instances at commit, on
--    their served channel, with the waiter's id only: the instance reads no
--    leases for it and answers with a replay of the key's lease (trigger
--    leases_tell_twins). Until now first_in_line only skipped such a row.
-- 2. A direct grant (GrantLease, GrantUnprobed) takes the key's advisory
--    lock (the one devalloc.claim_idempotency_key tries, class 1685482611)
--    before it writes the lease, waiting for a grant from the line that
--    holds it: the line then sees the direct grant's key as busy instead of
--    free, and its grant never meets the key in the unique index.
-- 3. Joining the line with a key takes the same lock and then looks for
--    the key's lease (devalloc.idempotency_key_taken): a key that has one is
--    refused (EnqueueWaiter's key_taken; the caller replays), and a grant
--    committing just after sees the row and removes it (1). Without the lock
--    a join and a grant could each miss the other.

-- +goose StatementBegin
CREATE FUNCTION devalloc.lock_idempotency_key(p_owner text, p_key text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_key IS NOT NULL THEN
        -- Waits: a direct grant or a join may queue behind a grant from
        -- the line (one statement), never the other way round (the line
        -- only tries, see devalloc.claim_idempotency_key).
        PERFORM pg_advisory_xact_lock(1685482611, hashtext(p_owner || chr(31) || p_key));
    END IF;
    RETURN true;
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.lock_idempotency_key(text, text) IS
    'Takes the key''s advisory lock (1685482611, hashtext(owner || chr(31) || key)) to the end of the transaction, '
    'waiting for whoever holds it (a grant from the line); true. No key: true at once.';

-- +goose StatementBegin
CREATE FUNCTION devalloc.idempotency_key_taken(p_owner text, p_key text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
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
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.idempotency_key_taken(text, text) IS
    'Whether a lease has the owner''s key, looked for under the key''s advisory lock (devalloc.lock_idempotency_key).';

-- +goose StatementBegin
CREATE FUNCTION devalloc.tell_twins() RETURNS trigger
LANGUAGE plpgsql AS $$
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
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.tell_twins() IS
    'A keyed lease was granted: the key''s other waiters leave the line and their instances are told '
    '({served: waiter id, key_has_lease: lease id}, no leases) to answer with a replay at once.';

-- The twins of a key, found by the trigger without reading the whole line.
CREATE INDEX waiters_idempotency_key ON devalloc.waiters (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TRIGGER leases_tell_twins AFTER INSERT ON devalloc.leases
    FOR EACH ROW WHEN (NEW.idempotency_key IS NOT NULL) EXECUTE FUNCTION devalloc.tell_twins();

-- +goose Down
DROP TRIGGER leases_tell_twins ON devalloc.leases;
DROP INDEX devalloc.waiters_idempotency_key;
DROP FUNCTION devalloc.tell_twins();
DROP FUNCTION devalloc.idempotency_key_taken(text, text);
DROP FUNCTION devalloc.lock_idempotency_key(text, text);
