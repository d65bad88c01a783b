-- +goose Up
-- The labeled pick in two steps, each locking as it reads: first the
-- devices that fit among the first 64 of the idle line (any of them is
-- older than every fitting device behind them), and only if none of those
-- could be locked, every idle device that fits, found through the label
-- index and taken in idle order. This replaces 00006's single statement,
-- which gathered up to 128 candidates, fetched them again by id, and could
-- answer "nothing" while only its candidates were locked.

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION devalloc.pick_idle_device(p_pool text, p_labels jsonb) RETURNS bigint
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
$$;
-- +goose StatementEnd

COMMENT ON FUNCTION devalloc.pick_idle_device(text, jsonb) IS
    'Locks (FOR UPDATE SKIP LOCKED) and returns the id of the least recently released idle device of the pool whose labels contain p_labels, or NULL. '
    'Reads the first 64 idle devices of the pool and, when none of those fits and is free, the fitting ones through the label index.';

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION devalloc.pick_idle_device(p_pool text, p_labels jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    picked bigint;
BEGIN
    IF p_labels = '{}'::jsonb THEN
        SELECT d.id INTO picked FROM devalloc.devices d
        WHERE d.state = 'idle' AND d.pool = p_pool
        ORDER BY d.idle_since, d.id
        LIMIT 1
        FOR UPDATE SKIP LOCKED;
        RETURN picked;
    END IF;
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
