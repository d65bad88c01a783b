-- +goose Up
-- An instance is alive only while its listener session holds its advisory
-- lock AND its heartbeat is younger than its own bound. The lock alone is
-- not enough: after a host crash or a network partition (no FIN/RST)
-- PostgreSQL keeps the session, and the lock, until TCP gives up (15
-- minutes to hours without keepalives), and the line would hand devices to
-- waiters nobody collects. Each instance writes its bound (3 x its
-- heartbeat interval) with every heartbeat, so the SQL needs no constant
-- and instances with different intervals judge each other right.
ALTER TABLE devalloc.instances
    ADD COLUMN silent_after interval NOT NULL DEFAULT interval '30 seconds'
        CONSTRAINT instances_silent_after_positive CHECK (silent_after > interval '0');
COMMENT ON COLUMN devalloc.instances.silent_after IS
    'How long the instance may go without a heartbeat and still count as alive: 3 x its heartbeat interval (30 s by default), written by the instance at registration and every heartbeat.';
COMMENT ON COLUMN devalloc.instances.seen_at IS
    'Last heartbeat (every --heartbeat-interval, 10 s by default); older than silent_after, the instance counts as dead for the line even if its lock is held.';

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION devalloc.instance_alive(p_instance bigint) RETURNS boolean LANGUAGE sql VOLATILE AS $$
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
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.instance_alive(bigint) IS
    'Whether the instance can answer its waiters: its listener session holds advisory lock (1685482609, id) and its '
    'last heartbeat (seen_at) is younger than its silent_after, 3 x its heartbeat interval (30 s with the default 10 s). '
    'A crashed host whose session the server still keeps is dead for the line once that bound has passed.';
COMMENT ON VIEW devalloc.queue IS 'The line of every pool in serving order: position 1 is served first when a device it fits is free. Waiters of instances that are not alive (listener session gone, or no heartbeat for 3 intervals) are left out: the line skips them, and their rows are removed with their instance.';

-- +goose Down
COMMENT ON VIEW devalloc.queue IS 'The line of every pool in serving order: position 1 is served first when a device it fits is free. Waiters of instances whose listener is gone are left out (the line skips them; they are removed after ~3 heartbeats).';
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION devalloc.instance_alive(p_instance bigint) RETURNS boolean LANGUAGE sql VOLATILE AS $$
    -- The instance's listener holds the lock exclusively; a shared try
    -- succeeds only when nobody does (and is released at commit).
    SELECT NOT pg_try_advisory_xact_lock_shared(1685482609, p_instance::int4)
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.instance_alive(bigint) IS 'Whether the instance''s listener session is connected (holds advisory lock 1685482609, id).';
COMMENT ON COLUMN devalloc.instances.seen_at IS 'Last heartbeat (every ~10 s).';
ALTER TABLE devalloc.instances DROP COLUMN silent_after;
