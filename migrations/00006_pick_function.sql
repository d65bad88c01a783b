-- +goose Up
-- The acquire's pick as one function, shared by the one-statement acquire and
-- the probing transaction (and callable by a DBA).
--
-- Why a function: a label selector that fits few devices made the plain
-- "ORDER BY idle_since LIMIT 1" pick read the idle line from its front until
-- it met a fitting device. Fitting devices that are in use go to the back of
-- the line when released, so after a while every such pick read nearly the
-- whole pool (a million rows, in a big farm). The planner cannot see that
-- correlation; this function bounds both ways of looking: the front of the
-- line, and the GIN label index.

-- +goose StatementBegin
CREATE FUNCTION devalloc.pick_idle_device(p_pool text, p_labels jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
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
    -- Candidates: the devices that fit among the first 64 of the line; and,
    -- when fewer than 8 of those fit, the 64 longest idle of the devices that
    -- fit, found through the label index (the "+ interval '0'" keeps the
    -- planner from walking the idle line for them instead). The least
    -- recently released unlocked candidate is the pick, as for any selector.
    SELECT d.id INTO picked FROM devalloc.devices d
    WHERE d.id = ANY (ARRAY(
            WITH head AS (
                SELECT h.id, h.labels FROM devalloc.devices h
                WHERE h.state = 'idle' AND h.pool = p_pool
                ORDER BY h.idle_since, h.id
                LIMIT 64
            ), fits AS (
                SELECT head.id FROM head WHERE head.labels @> p_labels
            )
            SELECT fits.id FROM fits
            UNION ALL
            (SELECT f.id FROM devalloc.devices f
             WHERE f.state = 'idle' AND f.pool = p_pool AND f.labels @> p_labels
               AND (SELECT count(*) FROM fits) < 8
             ORDER BY f.idle_since + interval '0', f.id
             LIMIT 64)))
      AND d.state = 'idle' AND d.pool = p_pool AND d.labels @> p_labels
    ORDER BY d.idle_since, d.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    RETURN picked;
END
$$;
-- +goose StatementEnd

COMMENT ON FUNCTION devalloc.pick_idle_device(text, jsonb) IS
    'Locks (FOR UPDATE SKIP LOCKED) and returns the id of the least recently released idle device of the pool whose labels contain p_labels, or NULL. '
    'Reads at most the first 64 idle devices of the pool plus, for a selector few of them fit, 64 found through the label index.';

-- +goose Down
DROP FUNCTION devalloc.pick_idle_device(text, jsonb);
