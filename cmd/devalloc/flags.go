package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// flagSet is a standard library FlagSet whose flags each have an
// environment twin: when the variable is set, it becomes the flag's default,
// and a flag given on the command line still wins.
type flagSet struct {
	*flag.FlagSet
	synopsis string
	// envErrs collects unusable environment values; parse reports them.
	envErrs []error
}

func newFlagSet(name, synopsis string, out io.Writer) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), synopsis: synopsis}
	fs.SetOutput(out)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: devalloc %s\n\nFlags (an environment variable, when set, replaces the default):\n", fs.synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args and reports the first bad environment value. -h gives
// flag.ErrHelp after printing the usage.
func (fs *flagSet) parse(args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		// The flag package has printed the error and the usage already.
		return usageError{error: err, reported: true}
	}
	if len(fs.envErrs) > 0 {
		return usageError{error: errors.Join(fs.envErrs...)}
	}
	return nil
}

// env looks up the twin of flag name and notes it in the usage text.
func (fs *flagSet) env(env string, usage *string) (string, bool) {
	*usage += " [$" + env + "]"
	return os.LookupEnv(env)
}

func (fs *flagSet) badEnv(env, value string, err error) {
	var ne *strconv.NumError
	if errors.As(err, &ne) {
		err = ne.Err
	}
	fs.envErrs = append(fs.envErrs, fmt.Errorf("invalid value %q for $%s: %v", value, env, err))
}

func (fs *flagSet) stringVar(p *string, name, env, def, usage string) {
	if v, ok := fs.env(env, &usage); ok {
		def = v
	}
	fs.StringVar(p, name, def, usage)
}

func (fs *flagSet) boolVar(p *bool, name, env string, def bool, usage string) {
	if v, ok := fs.env(env, &usage); ok {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			fs.badEnv(env, v, err)
		} else {
			def = b
		}
	}
	fs.BoolVar(p, name, def, usage)
}

func (fs *flagSet) intVar(p *int, name, env string, def int, usage string) {
	if v, ok := fs.env(env, &usage); ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			fs.badEnv(env, v, err)
		} else {
			def = n
		}
	}
	fs.IntVar(p, name, def, usage)
}

func (fs *flagSet) durationVar(p *time.Duration, name, env string, def time.Duration, usage string) {
	if v, ok := fs.env(env, &usage); ok {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			fs.badEnv(env, v, errors.New("want a duration such as 30s, 10m or 1h"))
		} else {
			def = d
		}
	}
	fs.DurationVar(p, name, def, usage)
}

// noArgs rejects stray positional arguments after the flags.
func (fs *flagSet) noArgs() error {
	if fs.NArg() > 0 {
		return usageError{error: fmt.Errorf("unexpected argument %q (usage: devalloc %s)", fs.Arg(0), fs.synopsis)}
	}
	return nil
}

// defaultDatabaseURL is a local PostgreSQL with the postgres user, as on a
// developer machine with trust authentication.
const defaultDatabaseURL = "postgres://postgres@localhost:5432/devalloc?sslmode=disable"

// databaseFlag binds --database-url to DATABASE_URL.
func (fs *flagSet) databaseFlag(p *string) {
	fs.stringVar(p, "database-url", "DATABASE_URL", defaultDatabaseURL, "PostgreSQL connection URL")
}
