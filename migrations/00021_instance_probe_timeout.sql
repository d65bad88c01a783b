-- +goose Up
-- A handoff still under its waiter's probe is left to that probe by the
-- reaper until its settle bound past expires_at: (devices + 1) x the probe
-- timeout + 1 s. Every instance reaps, and the probe that may still confirm
-- the handoff runs at the waiter's instance under that instance's timeout;
-- a reaper judging by its own (shorter) timeout would end a handoff whose
-- probe is still within its bound. Each instance writes its timeout with
-- its heartbeat, and the reaper takes the longest of them.
ALTER TABLE devalloc.instances
    ADD COLUMN probe_timeout interval NOT NULL DEFAULT interval '2 seconds'
        CONSTRAINT instances_probe_timeout_positive CHECK (probe_timeout > interval '0');
COMMENT ON COLUMN devalloc.instances.probe_timeout IS
    'The instance''s probe timeout (serve flag probe-timeout), written at registration and every heartbeat. The reaper leaves a handoff still under its waiter''s probe until (devices + 1) x the longest of these + 1 s past its expires_at.';

-- +goose Down
ALTER TABLE devalloc.instances DROP COLUMN probe_timeout;
