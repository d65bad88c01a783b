package db

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
)

// API key roles, as stored in devalloc.api_keys.role.
const (
	RoleAdmin  = "admin"
	RoleClient = "client"
)

// keyPrefix marks devalloc secrets, so a leaked one is recognisable in logs
// and by secret scanners.
const keyPrefix = "dva_"

// MinSecretLength is the shortest secret accepted for a configured key
// (DEVALLOC_ADMIN_KEY); generated secrets are far longer.
const MinSecretLength = 16

// APIKey describes a key; its secret is never stored.
type APIKey struct {
	Name      string
	Role      string
	CreatedAt time.Time
	RevokedAt *time.Time
}

// Admin reports whether the key may do everything.
func (k APIKey) Admin() bool { return k.Role == RoleAdmin }

// KeyStore keeps API keys. It needs no running allocator, so
// "devalloc keys create" works on the database before any server runs.
type KeyStore struct {
	q *dbsqlc.Queries
}

// NewKeyStore returns a key store on conn (a pool or a connection).
// On a pool, a lookup that failed before reaching the server (a cut
// connection) is retried once on another connection.
func NewKeyStore(conn dbsqlc.DBTX) *KeyStore {
	if pool, ok := conn.(*pgxpool.Pool); ok {
		conn = retrying(pool)
	}
	return &KeyStore{q: dbsqlc.New(conn)}
}

// Create makes a key with a fresh random secret and returns the secret,
// which is shown this once and never again.
func (s *KeyStore) Create(ctx context.Context, name, role string) (string, APIKey, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", APIKey{}, fmt.Errorf("create key %q: random: %w", name, err)
	}
	secret := keyPrefix + base64.RawURLEncoding.EncodeToString(raw)
	hash := hashSecret(secret)
	r, err := s.q.CreateAPIKey(ctx, dbsqlc.CreateAPIKeyParams{Name: name, Role: role, SecretHash: hash[:]})
	if isUniqueViolation(err) {
		return "", APIKey{}, ErrKeyExists
	}
	if err != nil {
		return "", APIKey{}, fmt.Errorf("create key %q: %w", name, err)
	}
	return secret, keyFromRow(r), nil
}

// EnsureAdmin makes sure an admin key with this secret exists, as
// DEVALLOC_ADMIN_KEY asks at serve start. Its name carries a fingerprint of
// the secret, so configuring a new secret adds a key instead of clashing
// with the old one (revoke that by name). A revoked key stays revoked.
func (s *KeyStore) EnsureAdmin(ctx context.Context, secret string) (APIKey, error) {
	if len(secret) < MinSecretLength {
		return APIKey{}, fmt.Errorf("admin key: want at least %d characters", MinSecretLength)
	}
	hash := hashSecret(secret)
	name := "admin-" + hex.EncodeToString(hash[:4])
	r, err := s.q.InsertAPIKeyIfAbsent(ctx, dbsqlc.InsertAPIKeyIfAbsentParams{Name: name, Role: RoleAdmin, SecretHash: hash[:]})
	if errors.Is(err, pgx.ErrNoRows) {
		// It existed already.
		r, err = s.q.GetAPIKeyByHash(ctx, hash[:])
	}
	if isUniqueViolation(err) {
		return APIKey{}, fmt.Errorf("admin key: an active key named %q has another secret", name)
	}
	if err != nil {
		return APIKey{}, fmt.Errorf("ensure admin key: %w", err)
	}
	key := keyFromRow(r)
	if key.RevokedAt != nil {
		return key, fmt.Errorf("admin key %q was revoked; configure a new secret", key.Name)
	}
	if !key.Admin() {
		return key, fmt.Errorf("the configured admin key is %q, a %s key", key.Name, key.Role)
	}
	return key, nil
}

// Authenticate returns the key whose secret this is, if it is not revoked.
func (s *KeyStore) Authenticate(ctx context.Context, secret string) (APIKey, error) {
	hash := hashSecret(secret)
	r, err := s.q.GetAPIKeyByHash(ctx, hash[:])
	if errors.Is(err, pgx.ErrNoRows) {
		return APIKey{}, ErrUnknownKey
	}
	if err != nil {
		return APIKey{}, fmt.Errorf("authenticate: %w", err)
	}
	if r.RevokedAt != nil {
		return APIKey{}, ErrUnknownKey
	}
	return keyFromRow(r), nil
}

// List returns every key, revoked ones too, by name.
func (s *KeyStore) List(ctx context.Context) ([]APIKey, error) {
	rows, err := s.q.ListAPIKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	out := make([]APIKey, 0, len(rows))
	for _, r := range rows {
		out = append(out, keyFromRow(r))
	}
	return out, nil
}

// Revoke ends the active key with that name. Leases it holds stay as they
// are (an admin may revoke them); the key authenticates nothing more.
func (s *KeyStore) Revoke(ctx context.Context, name string) error {
	n, err := s.q.RevokeAPIKey(ctx, name)
	if err != nil {
		return fmt.Errorf("revoke key %q: %w", name, err)
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

// SecretFingerprint identifies a secret without revealing it (for caches
// keyed by secret).
func SecretFingerprint(secret string) [32]byte { return hashSecret(secret) }

// hashSecret is SHA-256: the secrets are 256 random bits, so a slow
// password hash would add latency to every request and no safety.
func hashSecret(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }
