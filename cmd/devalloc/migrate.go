package main

import (
	"context"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/devalloc/devalloc/db/migrate"
)

// runMigrate is "devalloc migrate up|down|status": the same embedded goose
// migrations serve applies, under the same advisory lock.
func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("migrate", "migrate up|down|status [flags]", stderr)
	var (
		databaseURL string
		logs        logFlags
	)
	fs.databaseFlag(&databaseURL)
	logs.register(fs)

	// The action may come before or after the flags.
	var action string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		action, args = args[0], args[1:]
	}
	if err := fs.parse(args); err != nil {
		return err
	}
	if action == "" && fs.NArg() > 0 {
		action = fs.Arg(0)
		if err := fs.parse(fs.Args()[1:]); err != nil {
			return err
		}
	}
	if err := fs.noArgs(); err != nil {
		return err
	}
	switch action {
	case "up", "down", "status":
	case "":
		fs.Usage()
		return usageError{error: fmt.Errorf("migrate needs an action: up, down or status")}
	default:
		return usageError{error: fmt.Errorf("unknown migrate action %q: want up, down or status", action)}
	}
	logger, err := logs.logger(stderr)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if action == "up" {
		err = ensureDatabase(ctx, databaseURL, logger)
	} else {
		err = checkDatabase(ctx, databaseURL)
	}
	if err != nil {
		return err
	}
	m, err := migrate.Open(ctx, databaseURL, logger)
	if err != nil {
		return err
	}
	defer m.Close()

	switch action {
	case "up":
		n, err := m.Up(ctx)
		if err != nil {
			return err
		}
		if n == 0 {
			fmt.Fprintln(stdout, "schema is up to date; no migrations to apply")
		} else {
			fmt.Fprintf(stdout, "applied %d migration(s)\n", n)
		}
	case "down":
		if err := m.Down(ctx); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "rolled back the most recent migration")
	case "status":
		st, err := m.Status(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tSTATE\tAPPLIED AT\tFILE")
		for _, s := range st {
			applied := "-"
			if !s.AppliedAt.IsZero() {
				applied = s.AppliedAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%05d\t%s\t%s\t%s\n", s.Source.Version, s.State, applied, s.Source.Path)
		}
		return tw.Flush()
	}
	return nil
}
