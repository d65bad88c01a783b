-- +goose Up
CREATE TABLE devalloc.api_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
    role        text        NOT NULL CHECK (role IN ('admin', 'client')),
    secret_hash bytea       NOT NULL UNIQUE CHECK (octet_length(secret_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
COMMENT ON TABLE devalloc.api_keys IS 'API keys. Only a SHA-256 of each secret is stored; the secret is shown once, when the key is created.';
COMMENT ON COLUMN devalloc.api_keys.id IS 'Surrogate key.';
COMMENT ON COLUMN devalloc.api_keys.name IS 'The key''s name; leases record it as their owner. Unique among keys not revoked.';
COMMENT ON COLUMN devalloc.api_keys.role IS 'admin (everything) or client (acquire, renew and release its own leases; read devices and pools).';
COMMENT ON COLUMN devalloc.api_keys.secret_hash IS 'SHA-256 of the secret (random, 256 bits), never the secret itself.';
COMMENT ON COLUMN devalloc.api_keys.created_at IS 'When the key was created.';
COMMENT ON COLUMN devalloc.api_keys.revoked_at IS 'When the key was revoked; it authenticates nothing from then on.';

-- A name can be reused once its previous key is revoked (key rotation).
CREATE UNIQUE INDEX api_keys_active_name ON devalloc.api_keys (name) WHERE revoked_at IS NULL;

-- +goose Down
DROP TABLE devalloc.api_keys;
