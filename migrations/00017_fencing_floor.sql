-- +goose Up
-- Fencing tokens only grow for a device name, whatever SQL runs: a holder
-- compares tokens to tell a newer lease from its own, so a token that goes
-- down (a DBA's UPDATE, or a device deleted and registered again under the
-- same name, which started again at 0) would make a stale holder look
-- current. The database refuses a lower token, and keeps the last token of
-- a deleted name in devalloc.fencing_floor, from which a device registered
-- again under that name continues.
--
-- Also: an offline device whose next_probe_at is NULL (an admin's or a
-- DBA's state change) was never re-probed, `next_probe_at <= now()` being
-- NULL for it. The health checker now takes NULL as due; the index that
-- feeds it orders by coalesce(next_probe_at, '-infinity').

CREATE TABLE devalloc.fencing_floor (
    name  text   PRIMARY KEY,
    token bigint NOT NULL
);
COMMENT ON TABLE devalloc.fencing_floor IS 'The highest fencing token of each device name whose device was deleted (or renamed away): a device registered under that name again starts from it, so the name''s tokens only grow. Rows are never lowered or removed.';
COMMENT ON COLUMN devalloc.fencing_floor.name IS 'Device name.';
COMMENT ON COLUMN devalloc.fencing_floor.token IS 'The fencing token the name had reached; a new device of this name starts there (its next lease gets token + 1).';

-- The history of names already deleted (or re-registered) before this
-- migration: their leases carry the tokens they reached.
INSERT INTO devalloc.fencing_floor (name, token)
SELECT device_name, max(fencing_token) FROM devalloc.leases GROUP BY device_name;
-- A device registered again before this migration continues above its
-- name's history when it is not leased (a leased one keeps its token, which
-- its lease carries; it catches up when deleted and registered again).
UPDATE devalloc.devices d SET fencing_token = f.token, updated_at = now()
FROM devalloc.fencing_floor f
WHERE f.name = d.name AND d.fencing_token < f.token AND d.state <> 'leased';

-- +goose StatementBegin
CREATE FUNCTION devalloc.fencing_token_never_lowers() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_floor bigint;
BEGIN
    IF NEW.fencing_token < OLD.fencing_token THEN
        RAISE EXCEPTION 'devalloc: the fencing token of device % may not go down (% to %)',
            OLD.name, OLD.fencing_token, NEW.fencing_token
            USING ERRCODE = 'check_violation', HINT = 'Fencing tokens only grow; a holder compares them to tell a newer lease.';
    END IF;
    IF NEW.name IS DISTINCT FROM OLD.name THEN
        -- Renamed: the old name keeps its floor, and the device continues
        -- above the floor of its new name.
        INSERT INTO devalloc.fencing_floor AS f (name, token) VALUES (OLD.name, OLD.fencing_token)
        ON CONFLICT (name) DO UPDATE SET token = greatest(f.token, EXCLUDED.token);
        SELECT f.token INTO v_floor FROM devalloc.fencing_floor f WHERE f.name = NEW.name;
        IF v_floor > NEW.fencing_token THEN
            IF NEW.state = 'leased' THEN
                -- Its lease carries the token: raising it would break the
                -- lease's match, keeping it would lower the name's tokens.
                RAISE EXCEPTION 'devalloc: a leased device may not take the name % (its tokens reached %, the device''s is %)',
                    NEW.name, v_floor, NEW.fencing_token
                    USING ERRCODE = 'check_violation', HINT = 'Rename it once its lease has ended.';
            END IF;
            NEW.fencing_token := v_floor;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.fencing_token_never_lowers() IS 'Trigger: refuses a lower fencing token on a device; on a rename, keeps the old name''s floor and continues above the new name''s.';
-- The WHEN keeps the acquire's token bump from calling PL/pgSQL.
CREATE TRIGGER devices_fencing_token_grows BEFORE UPDATE OF fencing_token, name ON devalloc.devices
    FOR EACH ROW WHEN (NEW.fencing_token < OLD.fencing_token OR NEW.name IS DISTINCT FROM OLD.name)
    EXECUTE FUNCTION devalloc.fencing_token_never_lowers();
COMMENT ON TRIGGER devices_fencing_token_grows ON devalloc.devices IS 'A device''s fencing token never goes down; a rename continues above the new name''s floor.';

-- +goose StatementBegin
CREATE FUNCTION devalloc.fencing_token_from_floor() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- greatest() ignores the NULL of a name never deleted.
    NEW.fencing_token := greatest(NEW.fencing_token,
                                  (SELECT f.token FROM devalloc.fencing_floor f WHERE f.name = NEW.name));
    RETURN NEW;
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.fencing_token_from_floor() IS 'Trigger: a device registered under a name that was deleted before starts at that name''s fencing floor.';
CREATE TRIGGER devices_fencing_token_from_floor BEFORE INSERT ON devalloc.devices
    FOR EACH ROW EXECUTE FUNCTION devalloc.fencing_token_from_floor();
COMMENT ON TRIGGER devices_fencing_token_from_floor ON devalloc.devices IS 'A device registered again under a deleted name starts at the name''s fencing floor.';

-- +goose StatementBegin
CREATE FUNCTION devalloc.fencing_floor_keep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO devalloc.fencing_floor AS f (name, token)
        SELECT d.name, d.fencing_token FROM devalloc.devices d
        ON CONFLICT (name) DO UPDATE SET token = greatest(f.token, EXCLUDED.token);
        RETURN NULL;
    END IF;
    INSERT INTO devalloc.fencing_floor AS f (name, token) VALUES (OLD.name, OLD.fencing_token)
    ON CONFLICT (name) DO UPDATE SET token = greatest(f.token, EXCLUDED.token);
    RETURN NULL;
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.fencing_floor_keep() IS 'Trigger: records the fencing token a deleted (or truncated) device reached as its name''s floor.';
CREATE TRIGGER devices_fencing_floor_on_delete AFTER DELETE ON devalloc.devices
    FOR EACH ROW EXECUTE FUNCTION devalloc.fencing_floor_keep();
CREATE TRIGGER devices_fencing_floor_on_truncate BEFORE TRUNCATE ON devalloc.devices
    FOR EACH STATEMENT EXECUTE FUNCTION devalloc.fencing_floor_keep();
COMMENT ON TRIGGER devices_fencing_floor_on_delete ON devalloc.devices IS 'A deleted device leaves its fencing token as its name''s floor.';
COMMENT ON TRIGGER devices_fencing_floor_on_truncate ON devalloc.devices IS 'A truncate leaves every device''s fencing token as its name''s floor.';

-- +goose StatementBegin
CREATE FUNCTION devalloc.fencing_floor_never_lowers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'devalloc: the fencing floor of device name % may not go down or go away', OLD.name
        USING ERRCODE = 'check_violation', HINT = 'A device registered again under this name would reuse fencing tokens.';
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION devalloc.fencing_floor_never_lowers() IS 'Trigger: refuses lowering, renaming or removing a fencing floor.';
CREATE TRIGGER fencing_floor_never_lowers BEFORE UPDATE ON devalloc.fencing_floor
    FOR EACH ROW WHEN (NEW.token < OLD.token OR NEW.name <> OLD.name)
    EXECUTE FUNCTION devalloc.fencing_floor_never_lowers();
CREATE TRIGGER fencing_floor_never_removed BEFORE DELETE ON devalloc.fencing_floor
    FOR EACH ROW EXECUTE FUNCTION devalloc.fencing_floor_never_lowers();
COMMENT ON TRIGGER fencing_floor_never_lowers ON devalloc.fencing_floor IS 'A fencing floor never goes down nor changes name.';
COMMENT ON TRIGGER fencing_floor_never_removed ON devalloc.fencing_floor IS 'A fencing floor is never removed.';

-- Offline devices due for a probe, NULL next_probe_at first (due since
-- always): ClaimOfflineDue (queries/health.sql) filters and orders by
-- this expression.
DROP INDEX devalloc.devices_offline_due;
CREATE INDEX devices_offline_due ON devalloc.devices ((coalesce(next_probe_at, '-infinity'::timestamptz)))
    WHERE state = 'offline';
COMMENT ON INDEX devalloc.devices_offline_due IS 'The health checker''s queue: offline devices by next probe time, those without one (NULL) first.';

-- +goose Down
DROP INDEX devalloc.devices_offline_due;
CREATE INDEX devices_offline_due ON devalloc.devices (next_probe_at) WHERE state = 'offline';
DROP TRIGGER fencing_floor_never_removed ON devalloc.fencing_floor;
DROP TRIGGER fencing_floor_never_lowers ON devalloc.fencing_floor;
DROP FUNCTION devalloc.fencing_floor_never_lowers();
DROP TRIGGER devices_fencing_floor_on_truncate ON devalloc.devices;
DROP TRIGGER devices_fencing_floor_on_delete ON devalloc.devices;
DROP FUNCTION devalloc.fencing_floor_keep();
DROP TRIGGER devices_fencing_token_from_floor ON devalloc.devices;
DROP FUNCTION devalloc.fencing_token_from_floor();
DROP TRIGGER devices_fencing_token_grows ON devalloc.devices;
DROP FUNCTION devalloc.fencing_token_never_lowers();
DROP TABLE devalloc.fencing_floor;
