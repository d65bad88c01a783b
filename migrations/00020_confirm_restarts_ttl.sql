-- +goose Up
-- A handoff's TTL ran from the handoff, and the waiter's probe used it up:
-- a request with a short TTL and a slow probe was answered 201 with a lease
-- that had lapsed already (issue 12, fourth review). Confirming now starts
-- the TTL over from the confirm (the client is told its lease from the
-- answer on, as a direct grant, which sets expires_at after its probe).
-- A lease that lapsed during the probe but was not ended yet is confirmed
-- too: the row locks order the confirm and the reaper (whose end re-checks
-- expires_at on the locked row), so either the reaper ended it first and
-- nothing is confirmed, or it sees the new expires_at and spares it.
-- Refusing lapsed ones would leave a request whose TTL is shorter than its
-- probe handed the same device over and over.
-- +goose StatementBegin
CREATE FUNCTION devalloc.confirm_handoff_until(p_leases uuid[]) RETURNS timestamptz LANGUAGE plpgsql VOLATILE AS $$
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
COMMENT ON FUNCTION devalloc.confirm_handoff_until(uuid[]) IS
    'The waiter''s probe passed: clears handoff_pending on the given leases, starts their TTL over from now '
    '(the probe does not eat it) and returns their new expires_at; NULL (nothing changed) when any of them ended '
    'before (they are no answer: the waiter gives the rest back). Replaces confirm_handoff, kept for '
    'instances of the version before.';

-- +goose Down
DROP FUNCTION devalloc.confirm_handoff_until(uuid[]);
