package db

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestIsInvalidData(t *testing.T) {
	conn, err := pgx.Connect(t.Context(), newDB(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(t.Context(), "SELECT '10000-13-45'::timestamptz")
	if !IsInvalidData(err) {
		t.Fatalf("a bad timestamp: IsInvalidData(%v) = false", err)
	}
	_, err = conn.Exec(t.Context(), "SELECT 1 FROM no_such_table")
	if IsInvalidData(err) {
		t.Fatalf("a missing table is not the caller's data: IsInvalidData(%v) = true", err)
	}
	if IsInvalidData(errors.New("plain")) || IsInvalidData(nil) {
		t.Fatal("non-PostgreSQL errors are not data exceptions")
	}
}
