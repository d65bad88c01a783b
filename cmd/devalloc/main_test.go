package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// runCmd runs the CLI in-process and returns its exit code and output.
// The buffers are safe for the goroutines some commands write from.
func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut syncBuffer
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	code = run(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestUsageAndExitCodes(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"no command", nil, 2, "Usage: devalloc <command>"},
		{"help", []string{"help"}, 0, "migrate up|down|status"},
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"serve -h", []string{"serve", "-h"}, 0, "[$DEVALLOC_PROBE_TIMEOUT]"},
		{"serve stray argument", []string{"serve", "now"}, 2, `unexpected argument "now"`},
		{"serve bad log format", []string{"serve", "--log-format", "xml"}, 2, "want text or json"},
		{"serve too few conns", []string{"serve", "--max-conns", "1"}, 2, "want at least 2"},
		{"serve ttl above max", []string{"serve", "--default-ttl", "2h", "--max-ttl", "1h"}, 2, "longer than --max-ttl"},
		{"serve bad handoff probe", []string{"serve", "--handoff-probe", "maybe"}, 2, `--handoff-probe "maybe": want probe or trust`},
		{"serve client priority too high", []string{"serve", "--client-max-priority", "101"}, 2, "want 0 to 100"},
		{"serve client priority negative", []string{"serve", "--client-max-priority", "-1"}, 2, "want 0 to 100"},
		{"serve zero priority aging", []string{"serve", "--priority-aging", "0s"}, 2, "--priority-aging 0s: want a positive duration"},
		{"migrate without action", []string{"migrate"}, 2, "needs an action"},
		{"migrate bad action", []string{"migrate", "sideways"}, 2, `unknown migrate action "sideways"`},
		{"openapi bad version", []string{"openapi", "--version", "2.0"}, 2, "want 3.0 or 3.1"},
		{"version", []string{"version"}, 0, "devalloc "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, tt.args...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d; stderr: %s", code, tt.code, stderr)
			}
			if !strings.Contains(stdout+stderr, tt.contains) {
				t.Errorf("output does not contain %q:\nstdout: %s\nstderr: %s", tt.contains, stdout, stderr)
			}
		})
	}
}

func TestOpenAPIPrintsBothVersions(t *testing.T) {
	for _, v := range []string{"3.0", "3.1"} {
		code, stdout, stderr := runCmd(t, "openapi", "--version", v)
		if code != 0 {
			t.Fatalf("openapi --version %s: exit %d: %s", v, code, stderr)
		}
		if !strings.Contains(stdout, `"openapi": "`+v) || !strings.Contains(stdout, "/v1/leases") {
			t.Errorf("openapi --version %s: unexpected document start: %.200s", v, stdout)
		}
	}
}

func TestEnvTwins(t *testing.T) {
	t.Setenv("DEVALLOC_ADDR", "127.0.0.1:9999")
	t.Setenv("DEVALLOC_MAX_WAIT", "90s")
	t.Setenv("DEVALLOC_MIGRATE", "false")
	t.Setenv("DATABASE_URL", "postgres://u@h:1/d")

	c, err := parseServeFlags(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.addr != "127.0.0.1:9999" || c.maxWait != 90*time.Second || c.migrate || c.databaseURL != "postgres://u@h:1/d" {
		t.Errorf("env twins not applied: %+v", c)
	}

	// The line's settings, by default and from the environment.
	if c.priorityAging != time.Minute || c.handoffProbe != "probe" || c.clientMaxPriority != 10 || c.optionsMaxClientPriority() != 10 {
		t.Errorf("line defaults: aging %s, handoff %q, client max priority %d", c.priorityAging, c.handoffProbe, c.clientMaxPriority)
	}
	t.Setenv("DEVALLOC_PRIORITY_AGING", "30s")
	t.Setenv("DEVALLOC_HANDOFF_PROBE", "trust")
	t.Setenv("DEVALLOC_CLIENT_MAX_PRIORITY", "0")
	c, err = parseServeFlags(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.priorityAging != 30*time.Second || c.handoffProbe != "trust" || c.clientMaxPriority != 0 {
		t.Errorf("line env twins not applied: aging %s, handoff %q, client max priority %d", c.priorityAging, c.handoffProbe, c.clientMaxPriority)
	}
	// 0 is "no priority above 0", which httpapi spells negative (its 0 is
	// the default).
	if got := c.optionsMaxClientPriority(); got >= 0 {
		t.Errorf("--client-max-priority 0 gave httpapi.Options.MaxClientPriority %d", got)
	}

	// A flag on the command line wins over its environment twin.
	c, err = parseServeFlags([]string{"--addr", ":7000", "--max-wait=2m"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.addr != ":7000" || c.maxWait != 2*time.Minute {
		t.Errorf("flags did not override env: addr %q max-wait %s", c.addr, c.maxWait)
	}
}

func TestBadEnvValueIsAUsageError(t *testing.T) {
	t.Setenv("DEVALLOC_PROBE_TIMEOUT", "soon")
	code, _, stderr := runCmd(t, "serve")
	if code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	if !strings.Contains(stderr, `invalid value "soon" for $DEVALLOC_PROBE_TIMEOUT`) {
		t.Errorf("stderr: %s", stderr)
	}
}
