-- +goose Up
-- confirm_handoff_until (migrations/00020) started the TTL at a "now" taken
-- before it locked the leases: a confirm that waited on a lease's row lock
-- (an admin's statement, a DBA's transaction) longer than the TTL wrote an
-- expires_at already past, and the waiter answered 201 with a lapsed lease,
-- which 00020 was written to end (issue 12, tenth review). The TTL now
-- starts once the leases are locked. The reaper stays safe: its end
-- re-checks expires_at against its own statement's time on the locked row.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION devalloc.confirm_handoff_until(p_leases uuid[]) RETURNS timestamptz LANGUAGE plpgsql VOLATILE AS $$
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
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION devalloc.confirm_handoff_until(p_leases uuid[]) RETURNS timestamptz LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_live    int;
    v_now     timestamptz := clock_timestamp();
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
    UPDATE devalloc.leases SET handoff_pending = false, expires_at = v_now + (expires_at - acquired_at)
    WHERE id = ANY (p_leases) AND handoff_pending;
    SELECT max(expires_at) INTO v_expires FROM devalloc.leases WHERE id = ANY (p_leases);
    RETURN v_expires;
END
$$;
-- +goose StatementEnd
