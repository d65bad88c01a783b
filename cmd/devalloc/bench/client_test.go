package bench

import (
	"errors"
	"net/http"
	"strings"
	"testing"
)

func TestClientReportsProblems(t *testing.T) {
	in, _ := startAPI(t)
	bad := newClient("dva_not_a_key_at_all", 1)
	defer bad.close()
	_, err := bad.acquire(t.Context(), in.URL(0), encode(acquireRequest{Pool: "p"}))
	var se *statusError
	if !errors.As(err, &se) || se.status != http.StatusUnauthorized || !strings.Contains(se.detail, "API key") {
		t.Fatalf("bad key: %v", err)
	}

	c := newClient(in.Key(), 1)
	defer c.close()
	// Nothing registered in the pool: nothing could ever match.
	_, err = c.acquire(t.Context(), in.URL(0), encode(acquireRequest{Pool: "bench-empty"}))
	if !errors.As(err, &se) || se.status != http.StatusUnprocessableEntity {
		t.Fatalf("empty pool: %v", err)
	}
	if n, err := c.waiting(t.Context(), in.URL(0), "bench-empty"); err != nil || n != 0 {
		t.Errorf("waiting: %d, %v", n, err)
	}
}

func TestProblemDetail(t *testing.T) {
	for in, want := range map[string]string{
		`{"title":"Not Found","detail":"no lease"}`: "no lease",
		`{"title":"Not Found"}`:                     "Not Found",
		" plain text \n":                            "plain text",
	} {
		if got := problemDetail([]byte(in)); got != want {
			t.Errorf("problemDetail(%q) = %q, want %q", in, got, want)
		}
	}
}
