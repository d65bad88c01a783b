package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/dbtest"
)

// closedPort is a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestNoPostgreSQLIsOneClearLine(t *testing.T) {
	addr := closedPort(t)
	t.Setenv("DATABASE_URL", "postgres://postgres@"+addr+"/x?sslmode=disable")
	for _, args := range [][]string{{"serve"}, {"migrate", "up"}, {"migrate", "status"}} {
		code, stdout, stderr := runCmd(t, args...)
		if code != 1 {
			t.Errorf("%v: exit code %d, want 1", args, code)
		}
		want := "devalloc: cannot reach PostgreSQL at " + addr + " (connection refused). Start PostgreSQL or set DATABASE_URL.\n"
		if stderr != want {
			t.Errorf("%v: stderr\n%q\nwant\n%q", args, stderr, want)
		}
		if stdout != "" {
			t.Errorf("%v: unexpected stdout %q", args, stdout)
		}
	}
}

// siblingURL points dbURL at another database on the same server.
func siblingURL(t *testing.T, dbURL, name string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Skipf("test database URL is not a postgres:// URL")
	}
	u.Path = "/" + name
	return u.String()
}

func dropDatabase(t *testing.T, adminURL, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		t.Logf("drop %s: %v", name, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Logf("drop %s: %v", name, err)
	}
}

// Instances that start together against a missing database all succeed:
// one creates it and the others lose the race harmlessly.
func TestEnsureDatabaseCreatesItOnceUnderConcurrency(t *testing.T) {
	adminURL := dbtest.NewDB(t)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "devalloc_cli_" + hex.EncodeToString(b)
	target := siblingURL(t, adminURL, name)
	t.Cleanup(func() { dropDatabase(t, adminURL, name) })

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	logger := slog.New(slog.DiscardHandler)
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Go(func() { errs[i] = ensureDatabase(ctx, target, logger) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("instance %d: %v", i, err)
		}
	}
	if err := checkDatabase(ctx, target); err != nil {
		t.Fatalf("database not there afterwards: %v", err)
	}
	// And once it exists, ensuring it again is a no-op.
	if err := ensureDatabase(ctx, target, logger); err != nil {
		t.Fatal(err)
	}
}

func TestMissingDatabaseIsExplained(t *testing.T) {
	adminURL := dbtest.NewDB(t)
	target := siblingURL(t, adminURL, "devalloc_cli_never_created")
	err := checkDatabase(t.Context(), target)
	if err == nil || !strings.Contains(err.Error(), `database "devalloc_cli_never_created" does not exist`) {
		t.Fatalf("got %v", err)
	}
}
