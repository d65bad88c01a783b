-- +goose Up
-- What happened to devices besides being leased and released (those are the
-- lease history): going offline, coming back, maintenance. Written by a
-- trigger, so a DBA's own UPDATE is recorded too; the idle <-> leased churn
-- of every acquire and release writes nothing here.

CREATE TABLE devalloc.device_events (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  bigint      REFERENCES devalloc.devices (id) ON DELETE SET NULL,
    device     text        NOT NULL,
    pool       text        NOT NULL,
    from_state text        NOT NULL,
    to_state   text        NOT NULL,
    reason     text        NOT NULL DEFAULT '',
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE devalloc.device_events IS 'State changes of devices into or out of offline and maintenance (probe failures, recoveries, maintenance), newest last; pruned with the lease history.';
COMMENT ON COLUMN devalloc.device_events.id IS 'Order of the events.';
COMMENT ON COLUMN devalloc.device_events.device_id IS 'The device; NULL once it was deleted.';
COMMENT ON COLUMN devalloc.device_events.device IS 'The device''s name at the time.';
COMMENT ON COLUMN devalloc.device_events.pool IS 'The device''s pool at the time.';
COMMENT ON COLUMN devalloc.device_events.from_state IS 'State before the change.';
COMMENT ON COLUMN devalloc.device_events.to_state IS 'State after the change.';
COMMENT ON COLUMN devalloc.device_events.reason IS 'The device''s state_reason after the change, e.g. the probe error that took it offline.';
COMMENT ON COLUMN devalloc.device_events.at IS 'When the change was made (clock time of the changing statement).';
CREATE INDEX device_events_at ON devalloc.device_events (at);
CREATE INDEX device_events_device ON devalloc.device_events (device_id, at);

-- +goose StatementBegin
CREATE FUNCTION devalloc.record_device_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO devalloc.device_events (device_id, device, pool, from_state, to_state, reason)
    VALUES (NEW.id, NEW.name, NEW.pool, OLD.state, NEW.state, NEW.state_reason);
    RETURN NULL;
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.record_device_event() IS 'Trigger: records a device''s change into or out of offline or maintenance in devalloc.device_events.';

CREATE TRIGGER devices_record_event AFTER UPDATE OF state ON devalloc.devices
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          AND (OLD.state IN ('offline', 'maintenance') OR NEW.state IN ('offline', 'maintenance')))
    EXECUTE FUNCTION devalloc.record_device_event();

-- +goose Down
DROP TRIGGER devices_record_event ON devalloc.devices;
DROP FUNCTION devalloc.record_device_event();
DROP TABLE devalloc.device_events;
