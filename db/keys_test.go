package db

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

func newKeyStore(t *testing.T) *KeyStore {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), newDB(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return NewKeyStore(pool)
}

func TestKeyLifecycle(t *testing.T) {
	s := newKeyStore(t)
	secret, key, err := s.Create(t.Context(), "ci", RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, "dva_") || len(secret) < 40 || key.Name != "ci" || key.Admin() {
		t.Fatalf("secret %q, key %+v", secret, key)
	}
	got, err := s.Authenticate(t.Context(), secret)
	if err != nil || got.Name != "ci" || got.Role != RoleClient {
		t.Fatalf("authenticate = %+v, %v", got, err)
	}
	if _, err := s.Authenticate(t.Context(), secret+"x"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("wrong secret: %v", err)
	}
	if _, _, err := s.Create(t.Context(), "ci", RoleAdmin); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("duplicate name: %v", err)
	}
	if err := s.Revoke(t.Context(), "ci"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(t.Context(), secret); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("revoked key authenticated: %v", err)
	}
	if err := s.Revoke(t.Context(), "ci"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second revoke: %v", err)
	}
	// The name is free again once revoked (rotation).
	if _, _, err := s.Create(t.Context(), "ci", RoleClient); err != nil {
		t.Fatalf("reuse of a revoked key's name: %v", err)
	}
	keys, err := s.List(t.Context())
	if err != nil || len(keys) != 2 || keys[0].RevokedAt == nil && keys[1].RevokedAt == nil {
		t.Fatalf("list = %+v, %v", keys, err)
	}
}

func TestEnsureAdmin(t *testing.T) {
	s := newKeyStore(t)
	const secret = "a-long-configured-secret"
	first, err := s.EnsureAdmin(t.Context(), secret)
	if err != nil || !first.Admin() || !strings.HasPrefix(first.Name, "admin-") {
		t.Fatalf("ensure = %+v, %v", first, err)
	}
	again, err := s.EnsureAdmin(t.Context(), secret)
	if err != nil || again.Name != first.Name {
		t.Fatalf("second ensure = %+v, %v", again, err)
	}
	if got, err := s.Authenticate(t.Context(), secret); err != nil || got.Name != first.Name {
		t.Fatalf("authenticate = %+v, %v", got, err)
	}
	if _, err := s.EnsureAdmin(t.Context(), "short"); err == nil {
		t.Fatal("a short admin secret was accepted")
	}
	if err := s.Revoke(t.Context(), first.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EnsureAdmin(t.Context(), secret); err == nil {
		t.Fatal("a revoked admin key came back")
	}
}
