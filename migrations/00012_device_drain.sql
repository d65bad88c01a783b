-- +goose Up
-- Drain: an admin asks for maintenance of a device that is leased; it goes
-- to maintenance instead of idle when its lease ends (released, revoked or
-- expired), so its holder is never cut off.
ALTER TABLE devalloc.devices ADD COLUMN drain boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN devalloc.devices.drain IS 'Maintenance is due when the current lease ends (set through PATCH {"drain": true} while leased).';

-- +goose Down
ALTER TABLE devalloc.devices DROP COLUMN drain;
