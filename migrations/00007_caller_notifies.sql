-- +goose Up
-- A NOTIFY inside a transaction makes its commit take a database-wide lock
-- and hold it through the WAL flush, so every release, each notifying from
-- the trigger, committed one at a time (bench: "Lock object" waits
-- dominated at 32 clients). devalloc's own release and expiry statements now
-- set devalloc.notify_by_caller for their transaction and the instance sends
-- the notifications itself after commit, many per NOTIFY statement. Every
-- other change (a DBA's UPDATE, a registration, a recovery, the end of
-- maintenance) still notifies from the trigger.

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION devalloc.notify_idle() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    IF current_setting('devalloc.notify_by_caller', true) = 'on' THEN
        RETURN NULL;
    END IF;
    payload := json_build_object('pool', NEW.pool, 'device', NEW.id, 'labels', NEW.labels)::text;
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
COMMENT ON FUNCTION devalloc.notify_idle() IS
    'Trigger: NOTIFY devalloc_idle with {pool, device, labels} when a device becomes idle, unless the transaction set '
    'devalloc.notify_by_caller = on (devalloc''s release and expiry: the instance notifies after commit, in batches).';

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION devalloc.notify_idle() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload text := json_build_object('pool', NEW.pool, 'device', NEW.id, 'labels', NEW.labels)::text;
BEGIN
    IF octet_length(payload) > 7900 THEN
        payload := json_build_object('pool', NEW.pool, 'device', NEW.id)::text;
    END IF;
    PERFORM pg_notify('devalloc_idle', payload);
    RETURN NULL;
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.notify_idle() IS 'Trigger: NOTIFY devalloc_idle with {pool, device, labels} when a device becomes idle.';
