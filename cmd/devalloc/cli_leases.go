package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/devalloc/devalloc/httpapi/client"
)

// requestTimeout bounds a client request that does not long-poll.
const requestTimeout = 30 * time.Second

// runRenew is "devalloc renew ID [--ttl 10m]".
func runRenew(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("renew", "renew LEASE-ID [--ttl 10m] [flags]", stderr)
	var (
		cf  clientFlags
		ttl time.Duration
	)
	cf.register(fs)
	fs.durationVar(&ttl, "ttl", "DEVALLOC_TTL", 0, "new lifetime from now, whole seconds (0: the server's default TTL)")
	positional, err := fs.parseInterleaved(args)
	if err != nil {
		return err
	}
	id, err := fs.leaseIDArg(positional)
	if err != nil {
		return err
	}
	ttlSeconds, err := seconds("ttl", ttl)
	if err != nil {
		return err
	}
	api, err := cf.connect(fs)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	r, err := api.RenewLeaseWithResponse(ctx, id, client.RenewLeaseRequest{TTLSeconds: ttlSeconds})
	if err != nil {
		return cf.reachError(err)
	}
	if err := client.CheckResponse(r.HTTPResponse, r.Body); err != nil {
		return err
	}
	if cf.json {
		return printJSON(stdout, r.JSON200)
	}
	return printLease(stdout, *r.JSON200, time.Now())
}

// runRelease is "devalloc release ID".
func runRelease(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release", "release LEASE-ID [flags]", stderr)
	var cf clientFlags
	cf.register(fs)
	positional, err := fs.parseInterleaved(args)
	if err != nil {
		return err
	}
	id, err := fs.leaseIDArg(positional)
	if err != nil {
		return err
	}
	api, err := cf.connect(fs)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	r, err := api.ReleaseLeaseWithResponse(ctx, id)
	if err != nil {
		return cf.reachError(err)
	}
	if err := client.CheckResponse(r.HTTPResponse, r.Body); err != nil {
		return err
	}
	if !cf.json {
		// With --json there is nothing to print: the API answers 204.
		_, err = fmt.Fprintf(stdout, "released lease %s\n", id)
	}
	return err
}

// defaultLeaseRows is how many leases "devalloc leases" shows by default:
// ended leases are the history, and it only grows.
const defaultLeaseRows = 100

// runLeases is "devalloc leases [--active] [--pool P] [--limit N]".
func runLeases(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("leases", "leases [--active] [--pool POOL] [--limit N] [flags]", stderr)
	var (
		cf     clientFlags
		active bool
		pool   string
		limit  int
	)
	cf.register(fs)
	fs.boolVar(&active, "active", "DEVALLOC_ACTIVE", false, "only active leases")
	fs.stringVar(&pool, "pool", "DEVALLOC_POOL", "", "only leases in this pool (empty: all pools)")
	fs.intVar(&limit, "limit", "DEVALLOC_LIMIT", defaultLeaseRows, "show at most this many leases, newest first (0: all)")
	positional, err := fs.parseInterleaved(args)
	if err != nil {
		return err
	}
	if len(positional) > 0 {
		return usageError{error: fmt.Errorf("unexpected argument %q (usage: devalloc %s)", positional[0], fs.synopsis)}
	}
	if limit < 0 {
		return usageError{error: fmt.Errorf("--limit %d: must not be negative", limit)}
	}
	api, err := cf.connect(fs)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	leases, more, err := collect(ctx, limit, func(ctx context.Context, size int64, cursor *string) ([]client.Lease, *string, error) {
		params := &client.ListLeasesParams{Limit: &size, Cursor: cursor}
		if active {
			params.Active = &active
		}
		if pool != "" {
			params.Pool = &pool
		}
		r, err := api.ListLeasesWithResponse(ctx, params)
		if err != nil {
			return nil, nil, cf.reachError(err)
		}
		if err := client.CheckResponse(r.HTTPResponse, r.Body); err != nil {
			return nil, nil, err
		}
		return r.JSON200.Leases, r.JSON200.NextCursor, nil
	})
	if err != nil {
		return err
	}
	if more {
		fmt.Fprintf(stderr, "devalloc: showing the newest %d leases; --limit 0 shows all\n", len(leases))
	}
	if cf.json {
		return printJSON(stdout, client.LeaseList{Leases: leases})
	}
	return printLeases(stdout, leases, time.Now())
}
