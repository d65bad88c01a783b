-- API keys: created by the CLI or at serve start, checked on every request.

-- name: CreateAPIKey :one
INSERT INTO devalloc.api_keys (name, role, secret_hash)
VALUES (@name, @role, @secret_hash)
RETURNING *;

-- name: InsertAPIKeyIfAbsent :one
-- For a key whose secret is configured (DEVALLOC_ADMIN_KEY): creating it
-- twice, or from several instances at once, is a no-op.
INSERT INTO devalloc.api_keys (name, role, secret_hash)
VALUES (@name, @role, @secret_hash)
ON CONFLICT (secret_hash) DO NOTHING
RETURNING *;

-- name: GetAPIKeyByHash :one
SELECT * FROM devalloc.api_keys WHERE secret_hash = @secret_hash;

-- name: ListAPIKeys :many
SELECT * FROM devalloc.api_keys ORDER BY name, created_at;

-- name: RevokeAPIKey :execrows
UPDATE devalloc.api_keys SET revoked_at = now()
WHERE name = @name AND revoked_at IS NULL;
