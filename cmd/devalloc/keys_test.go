package main

import (
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/devalloc/devalloc/db/dbtest"
)

func TestKeysCommands(t *testing.T) {
	dbURL := dbtest.NewDB(t)
	code, out, errOut := runCmd(t, "keys", "create", "--name", "ci-runner", "--role", "client", "--database-url", dbURL, "--log-level", "warn")
	if code != 0 || !regexp.MustCompile(`^dva_[A-Za-z0-9_-]{43}\n$`).MatchString(out) {
		t.Fatalf("create: exit %d, stdout %q (want only the key), stderr %q", code, out, errOut)
	}
	if code, _, errOut := runCmd(t, "keys", "create", "--name", "ci-runner", "--database-url", dbURL); code != 1 || !strings.Contains(errOut, "exists") {
		t.Fatalf("duplicate create: exit %d, %q", code, errOut)
	}
	if code, _, _ := runCmd(t, "keys", "create", "--name", "x", "--role", "root", "--database-url", dbURL); code != 2 {
		t.Fatalf("bad role: exit %d, want 2", code)
	}
	code, out, _ = runCmd(t, "keys", "list", "--database-url", dbURL)
	if code != 0 || !regexp.MustCompile(`(?m)^ci-runner\s+client\s+\S+\s+-$`).MatchString(out) {
		t.Fatalf("list: exit %d\n%s", code, out)
	}
	if code, _, _ := runCmd(t, "keys", "revoke", "ci-runner", "--database-url", dbURL); code != 0 {
		t.Fatalf("revoke: exit %d", code)
	}
	if code, _, errOut := runCmd(t, "keys", "revoke", "ci-runner", "--database-url", dbURL); code != 1 || !strings.Contains(errOut, "no active key") {
		t.Fatalf("second revoke: exit %d %q", code, errOut)
	}
}

// DEVALLOC_ADMIN_KEY at serve makes that secret an admin key, and the
// server refuses requests without a key.
func TestServeEnsuresAdminKey(t *testing.T) {
	dbURL := dbtest.NewDB(t)
	const secret = "a-configured-admin-secret"
	t.Setenv("DEVALLOC_ADMIN_KEY", secret)
	base, _, stop, _ := startServe(t, dbURL, "--demo", "2")
	defer stop()

	anon, err := http.Get(base + "/v1/pools")
	if err != nil {
		t.Fatal(err)
	}
	anon.Body.Close()
	if anon.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no key: %d, want 401", anon.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/devices", strings.NewReader(`{"name":"mine","address":"127.0.0.1:1","probe":"none"}`))
	req.Header.Set("Authorization", "Bearer "+secret)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("admin registers a device: %d", resp.StatusCode)
	}
	// The demo key is a client: it may not.
	if resp := authDo(t, http.MethodPost, base+"/v1/devices", `{"name":"theirs","address":"127.0.0.1:1"}`); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("demo key registers a device: %d", resp.StatusCode)
	}
}
