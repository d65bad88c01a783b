-- +goose Up
-- Waiters long-poll on the channel devalloc_idle. Every path that makes a
-- device idle (release, expiry, recovery, registration, maintenance end, or a
-- DBA's own UPDATE) fires these triggers, so no code path can forget to wake
-- them. NOTIFY is transactional: listeners hear it only after commit.
-- +goose StatementBegin
CREATE FUNCTION devalloc.notify_idle() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload text := json_build_object('pool', NEW.pool, 'device', NEW.id, 'labels', NEW.labels)::text;
BEGIN
    -- NOTIFY payloads are capped at 8000 bytes; with outsized labels the
    -- listener gets only the pool and wakes one waiter per selector there.
    IF octet_length(payload) > 7900 THEN
        payload := json_build_object('pool', NEW.pool, 'device', NEW.id)::text;
    END IF;
    -- The device id keeps payloads distinct: PostgreSQL folds identical
    -- notifications of one transaction into one, which would wake one waiter
    -- for two freed devices.
    PERFORM pg_notify('devalloc_idle', payload);
    RETURN NULL;
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.notify_idle() IS 'Trigger: NOTIFY devalloc_idle with {pool, device, labels} when a device becomes idle.';

CREATE TRIGGER devices_notify_idle_insert AFTER INSERT ON devalloc.devices
    FOR EACH ROW WHEN (NEW.state = 'idle') EXECUTE FUNCTION devalloc.notify_idle();
CREATE TRIGGER devices_notify_idle_update AFTER UPDATE OF state ON devalloc.devices
    FOR EACH ROW WHEN (NEW.state = 'idle' AND OLD.state <> 'idle') EXECUTE FUNCTION devalloc.notify_idle();

-- +goose Down
DROP TRIGGER devices_notify_idle_update ON devalloc.devices;
DROP TRIGGER devices_notify_idle_insert ON devalloc.devices;
DROP FUNCTION devalloc.notify_idle();
