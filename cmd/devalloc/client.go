package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"

	"github.com/devalloc/devalloc/httpapi/client"
)

// The client commands talk to a devalloc server over its HTTP API, through
// the generated Go client (httpapi/client). They need no database.

// isClientCommand reports whether cmd is one of them.
func isClientCommand(cmd string) bool {
	switch cmd {
	case "acquire", "renew", "release", "leases", "devices", "pools":
		return true
	}
	return false
}

// runClient runs a client command and returns the exit code: 0 on success,
// 1 when it failed (one line on stderr, e.g. "devalloc: 410 lease ... has
// ended (released)"), 2 on a usage mistake; acquire with a command exits
// with the command's code (see exitCodeError).
func runClient(ctx context.Context, cmd string, args []string, stdout, stderr io.Writer) int {
	var err error
	switch cmd {
	case "acquire":
		err = runAcquire(ctx, args, stdout, stderr)
	case "renew":
		err = runRenew(ctx, args, stdout, stderr)
	case "release":
		err = runRelease(ctx, args, stdout, stderr)
	case "leases":
		err = runLeases(ctx, args, stdout, stderr)
	case "devices":
		err = runDevices(ctx, args, stdout, stderr)
	case "pools":
		err = runPools(ctx, args, stdout, stderr)
	default:
		err = usageError{error: fmt.Errorf("unknown command %q", cmd)}
	}
	var (
		uerr usageError
		code exitCodeError
	)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &code):
		if code.err != nil {
			fmt.Fprintf(stderr, "devalloc: %s\n", oneLine(code.err))
		}
		return code.code
	case errors.As(err, &uerr):
		if !uerr.reported {
			fmt.Fprintf(stderr, "devalloc: %s\n", oneLine(err))
		}
		return 2
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stderr, "devalloc: interrupted")
		return 1
	default:
		fmt.Fprintf(stderr, "devalloc: %s\n", oneLine(err))
		return 1
	}
}

// exitCodeError makes the process exit with code, after printing err if
// it is not nil.
type exitCodeError struct {
	code int
	err  error
}

func (e exitCodeError) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	return fmt.Sprintf("exit status %d", e.code)
}

// defaultURL is a devalloc server on this machine, as `make run` starts it.
const defaultURL = "http://127.0.0.1:8080"

// clientFlags are the flags every client command takes.
type clientFlags struct {
	url  string
	key  string
	json bool
}

func (c *clientFlags) register(fs *flagSet) {
	fs.stringVar(&c.url, "url", "DEVALLOC_URL", defaultURL, "devalloc server to talk to")
	// Not through fs.stringVar: a default taken from the environment would
	// be printed by -h, and this one is a secret.
	fs.StringVar(&c.key, "key", "", "API key, sent as Authorization: Bearer (prefer the environment: a flag shows in ps) [$DEVALLOC_KEY]")
	fs.boolVar(&c.json, "json", "DEVALLOC_JSON", false, "print JSON instead of a table")
}

// connect checks the flags (after parsing) and returns a client.
func (c *clientFlags) connect(fs *flagSet) (*client.ClientWithResponses, error) {
	keySet := false
	fs.Visit(func(f *flag.Flag) { keySet = keySet || f.Name == "key" })
	if !keySet {
		c.key = os.Getenv("DEVALLOC_KEY")
	}
	u, err := url.Parse(c.url)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usageError{error: fmt.Errorf("--url %q: want http://host:port or https://host", c.url)}
	}
	return client.NewClientWithResponses(c.url,
		client.WithBearerToken(c.key),
		client.WithUserAgent("devalloc/"+versionString()))
}

// reachError explains a request that got no answer.
func (c *clientFlags) reachError(err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	return hintError{
		msg:  fmt.Sprintf("cannot reach devalloc at %s (%s)", c.url, reachReason(err)),
		hint: `Start "devalloc serve" there, or set DEVALLOC_URL (--url)`,
		err:  err,
	}
}
