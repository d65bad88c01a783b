-- +goose Up
-- Waiting acquires live in each instance's memory (they hold no
-- connection); each instance reports its counts here every couple of
-- seconds so that pool_summary can show them to a DBA.
CREATE TABLE devalloc.instance_waiting (
    instance    text        NOT NULL,
    pool        text        NOT NULL,
    waiting     integer     NOT NULL CHECK (waiting > 0),
    reported_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, pool)
);
COMMENT ON TABLE devalloc.instance_waiting IS 'Acquires waiting per instance and pool, as each instance last reported (every ~2 s while it has waiters); rows older than ~10 s are from an instance that stopped.';
COMMENT ON COLUMN devalloc.instance_waiting.instance IS 'The reporting instance (an id of its own, new at every start).';
COMMENT ON COLUMN devalloc.instance_waiting.pool IS 'The pool they wait for.';
COMMENT ON COLUMN devalloc.instance_waiting.waiting IS 'How many acquires wait there.';
COMMENT ON COLUMN devalloc.instance_waiting.reported_at IS 'When the instance last reported it.';

CREATE OR REPLACE VIEW devalloc.pool_summary AS
SELECT pool,
       count(*)                                      AS devices,
       count(*) FILTER (WHERE state = 'idle')        AS idle,
       count(*) FILTER (WHERE state = 'leased')      AS leased,
       count(*) FILTER (WHERE state = 'offline')     AS offline,
       count(*) FILTER (WHERE state = 'maintenance') AS maintenance,
       coalesce((SELECT sum(w.waiting) FROM devalloc.instance_waiting w
                 WHERE w.pool = d.pool AND w.reported_at > now() - interval '10 seconds'), 0) AS waiting
FROM devalloc.devices d
GROUP BY pool;
COMMENT ON VIEW devalloc.pool_summary IS 'Devices per pool by state, and the acquires waiting for the pool across all live instances.';

-- +goose Down
-- A view cannot lose a column in place: drop it and create the old one.
DROP VIEW devalloc.pool_summary;
CREATE VIEW devalloc.pool_summary AS
SELECT pool,
       count(*)                                      AS devices,
       count(*) FILTER (WHERE state = 'idle')        AS idle,
       count(*) FILTER (WHERE state = 'leased')      AS leased,
       count(*) FILTER (WHERE state = 'offline')     AS offline,
       count(*) FILTER (WHERE state = 'maintenance') AS maintenance
FROM devalloc.devices
GROUP BY pool;
COMMENT ON VIEW devalloc.pool_summary IS 'Devices per pool by state.';
DROP TABLE devalloc.instance_waiting;
