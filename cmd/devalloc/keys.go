package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/db/devalloctype"
)

// runKeys is "devalloc keys create|list|revoke": API keys, managed on the
// database directly (DATABASE_URL), so the first key can exist before any
// server runs.
func runKeys(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("keys", "keys create --name N --role client|admin | keys list | keys revoke --name N", stderr)
	var (
		databaseURL, name, role string
		logs                    logFlags
	)
	fs.databaseFlag(&databaseURL)
	fs.StringVar(&name, "name", "", "the key's name (leases record it as their owner)")
	fs.StringVar(&role, "role", db.RoleClient, "client (acquire, renew, release its own leases; read devices and pools) or admin (everything)")
	logs.register(fs)

	var action string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		action, args = args[0], args[1:]
	}
	// "keys revoke NAME [flags]" reads naturally too.
	if action == "revoke" && len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if err := fs.parse(args); err != nil {
		return err
	}
	if err := fs.noArgs(); err != nil {
		return err
	}
	switch action {
	case "create", "revoke":
		if name == "" {
			return usageError{error: fmt.Errorf("keys %s needs --name", action)}
		}
	case "list":
	case "":
		fs.Usage()
		return usageError{error: errors.New("keys needs an action: create, list or revoke")}
	default:
		return usageError{error: fmt.Errorf("unknown keys action %q: want create, list or revoke", action)}
	}
	if action == "create" && role != db.RoleClient && role != db.RoleAdmin {
		return usageError{error: fmt.Errorf("--role %q: want client or admin", role)}
	}
	logger, err := logs.logger(stderr)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	store, closeStore, err := openKeyStore(ctx, databaseURL, logger)
	if err != nil {
		return err
	}
	defer closeStore()

	switch action {
	case "create":
		secret, _, err := store.Create(ctx, name, role)
		if errors.Is(err, devalloctype.ErrKeyExists) {
			return fmt.Errorf("a key named %q exists; revoke it first or pick another name", name)
		}
		if err != nil {
			return err
		}
		// Only the secret on stdout, so KEY=$(devalloc keys create ...) works.
		fmt.Fprintln(stdout, secret)
		fmt.Fprintf(stderr, "created %s key %q; the secret above is shown only this once\n", role, name)
	case "revoke":
		if err := store.Revoke(ctx, name); errors.Is(err, devalloctype.ErrNotFound) {
			return fmt.Errorf("no active key named %q", name)
		} else if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "revoked key %q\n", name)
	case "list":
		keys, err := store.List(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE\tCREATED\tREVOKED")
		for _, k := range keys {
			revoked := "-"
			if k.RevokedAt != nil {
				revoked = k.RevokedAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.Name, k.Role, k.CreatedAt.UTC().Format(time.RFC3339), revoked)
		}
		return tw.Flush()
	}
	return nil
}

// openKeyStore makes sure the database exists and is migrated (keys may be
// created before any server ran), then opens a small pool on it.
func openKeyStore(ctx context.Context, databaseURL string, logger *slog.Logger) (*db.KeyStore, func(), error) {
	if err := ensureDatabase(ctx, databaseURL, logger); err != nil {
		return nil, nil, err
	}
	if err := migrateUp(ctx, databaseURL, logger); err != nil {
		return nil, nil, err
	}
	pool, err := openPool(ctx, databaseURL, 2, nil)
	if err != nil {
		return nil, nil, err
	}
	return db.NewKeyStore(pool), pool.Close, nil
}
