package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"testing"

	"github.com/danielgtaylor/huma/v2"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/devalloc/devalloc/db/devalloctype"
)

// Database trouble is never a 500: a restart, a dropped connection or a
// timeout is 503 with Retry-After; a value the database refused is 422.
func TestFailMapsDatabaseErrors(t *testing.T) {
	s := &server{log: slog.New(slog.DiscardHandler)}
	for _, c := range []struct {
		code       string
		status     int
		kind       string
		retryAfter bool
	}{
		{"57P01", http.StatusServiceUnavailable, kindDatabaseUnavailable, true}, // admin shutdown
		{"08006", http.StatusServiceUnavailable, kindDatabaseUnavailable, true}, // connection failure
		{"57014", http.StatusServiceUnavailable, kindDatabaseUnavailable, true}, // statement timeout
		{"55P03", http.StatusServiceUnavailable, kindDatabaseUnavailable, true}, // lock timeout
		{"22021", http.StatusUnprocessableEntity, kindInvalidValue, false},      // bad encoding
		{"42P01", http.StatusInternalServerError, "", false},                    // our bug
		{"", http.StatusServiceUnavailable, kindShuttingDown, true},             // devalloctype.ErrShuttingDown
	} {
		var cause error = &pgconn.PgError{Code: c.code}
		if c.code == "" {
			cause = devalloctype.ErrShuttingDown
		}
		err := s.fail(context.Background(), "op", "thing", fmt.Errorf("query: %w", cause))
		var se huma.StatusError
		if !errors.As(err, &se) || se.GetStatus() != c.status {
			t.Errorf("SQLSTATE %s: %v, want status %d", c.code, err, c.status)
			continue
		}
		if m, ok := se.(*huma.ErrorModel); ok && c.kind != "" && m.Type != problemTypePrefix+c.kind {
			t.Errorf("SQLSTATE %s: type %q", c.code, m.Type)
		}
		var he huma.HeadersError
		hasHeaders := errors.As(err, &he)
		if c.retryAfter != (hasHeaders && he.GetHeaders().Get("Retry-After") != "") {
			t.Errorf("SQLSTATE %s: Retry-After present = %v, want %v", c.code, hasHeaders, c.retryAfter)
		}
	}
}
