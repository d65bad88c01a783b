// Command devalloc is the device allocator's one binary: the HTTP server,
// schema migrations and the OpenAPI document.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

const usageText = `devalloc hands out devices to one holder at a time, with PostgreSQL as the arbiter.

Usage: devalloc <command> [flags]

Commands:
  serve                      run the HTTP API (migrates the database first)
  migrate up|down|status     apply, roll back one, or list schema migrations
  keys create|list|revoke    manage API keys (on the database; no server needed)
  openapi [--version 3.1]    print the OpenAPI document (3.0 or 3.1) to stdout
  bench [scenario...]        measure throughput, handoff, waiters, scale against the bare-SQL floor
  version                    print the version
  help                       show this help

Client commands (talk to a server: --url/DEVALLOC_URL, --key/DEVALLOC_KEY):
  acquire [-- command...]    take a device; with a command, hold it while the command runs
  renew LEASE-ID             extend a lease
  release LEASE-ID           give a device back
  leases                     list leases (--active, --pool)
  devices                    list devices (--pool, --state)
  devices import FILE        create or update devices from a CSV or YAML file (idempotent)
  devices drain|undrain NAME maintenance once the current lease ends; back into rotation
  pools                      count each pool's devices by state

Run "devalloc <command> -h" for a command's flags. Every flag has an
environment twin (DEVALLOC_*, and DATABASE_URL for --database-url).
`

// usageError is a mistake in how devalloc was invoked; it exits 2.
// reported means it has been printed already (by the flag package).
type usageError struct {
	error
	reported bool
}

func (e usageError) Unwrap() error { return e.error }

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command and returns the process exit code: 0 on
// success, 1 when the command failed, 2 on a usage mistake.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return 2
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "acquire":
		err = runAcquire(ctx, rest, stdout, stderr)
	case "renew":
		err = runRenew(ctx, rest, stdout, stderr)
	case "release":
		err = runRelease(ctx, rest, stdout, stderr)
	case "leases":
		err = runLeases(ctx, rest, stdout, stderr)
	case "devices":
		err = runDevices(ctx, rest, stdout, stderr)
	case "pools":
		err = runPools(ctx, rest, stdout, stderr)
	case "serve":
		err = runServe(ctx, rest, stdout, stderr)
	case "migrate":
		err = runMigrate(ctx, rest, stdout, stderr)
	case "keys":
		err = runKeys(ctx, rest, stdout, stderr)
	case "openapi":
		err = runOpenAPI(rest, stdout, stderr)
	case "bench":
		err = runBench(ctx, rest, stdout, stderr)
	case "version", "--version", "-version":
		err = runVersion(rest, stdout)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usageText)
		return 0
	default:
		err = usageError{error: fmt.Errorf("unknown command %q (run \"devalloc help\")", cmd)}
	}
	return exitCode(err, stderr)
}

// exitCode reports err on stderr as one line and turns it into the exit
// code: 0 for none (or -h), 2 for a usage mistake, the code an
// exitCodeError carries (acquire -- cmd exits with cmd's), 1 otherwise.
func exitCode(err error, stderr io.Writer) int {
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
	case errors.Is(err, context.Canceled):
		// SIGINT/SIGTERM before the command got going.
		fmt.Fprintln(stderr, "devalloc: interrupted")
		return 1
	case errors.As(err, &uerr):
		if !uerr.reported {
			fmt.Fprintf(stderr, "devalloc: %s\n", oneLine(err))
		}
		return 2
	default:
		fmt.Fprintf(stderr, "devalloc: %s\n", oneLine(err))
		return 1
	}
}

// oneLine flattens multi-line errors (pgx lists one line per address it
// tried) so every failure prints as a single line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
