package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
)

// labelsFlag is a repeatable --label k=v. Its environment twin holds
// comma-separated pairs; any --label on the command line replaces them.
type labelsFlag struct {
	labels  map[string]string
	fromEnv bool
}

func (fs *flagSet) labelsVar(p *labelsFlag, name, env, usage string) {
	if v, ok := fs.env(env, &usage); ok && strings.TrimSpace(v) != "" {
		for pair := range strings.SplitSeq(v, ",") {
			if err := p.add(strings.TrimSpace(pair)); err != nil {
				fs.badEnv(env, v, err)
				break
			}
		}
		p.fromEnv = true
	}
	fs.Var(p, name, usage)
}

func (l *labelsFlag) String() string {
	if l == nil || len(l.labels) == 0 {
		return ""
	}
	return labelString(l.labels)
}

func (l *labelsFlag) Set(v string) error {
	if l.fromEnv {
		l.labels, l.fromEnv = nil, false
	}
	return l.add(v)
}

func (l *labelsFlag) add(pair string) error {
	k, v, ok := strings.Cut(pair, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, got %q", pair)
	}
	if l.labels == nil {
		l.labels = map[string]string{}
	}
	l.labels[k] = v
	return nil
}

// labelString is labels as sorted k=v pairs, comma-separated.
func labelString(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	pairs := make([]string, len(keys))
	for i, k := range keys {
		pairs[i] = k + "=" + labels[k]
	}
	return strings.Join(pairs, ",")
}

// parseInterleaved parses args allowing flags after positional arguments
// ("release ID --json"), and returns the positional ones.
func (fs *flagSet) parseInterleaved(args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// leaseIDArg is the one positional argument of renew and release.
func (fs *flagSet) leaseIDArg(positional []string) (uuid.UUID, error) {
	if len(positional) != 1 {
		return uuid.UUID{}, usageError{error: fmt.Errorf("want one lease id (usage: devalloc %s)", fs.synopsis)}
	}
	id, err := uuid.Parse(positional[0])
	if err != nil {
		return uuid.UUID{}, usageError{error: fmt.Errorf("%q is not a lease id (a UUID)", positional[0])}
	}
	return id, nil
}

// seconds converts a duration flag to the API's whole seconds, rounding up
// so a short positive duration never becomes 0 ("the server's default").
// It returns nil for 0, leaving the field out.
func seconds(name string, d time.Duration) (*int64, error) {
	switch {
	case d < 0:
		return nil, usageError{error: fmt.Errorf("--%s %s: must not be negative", name, d)}
	case d == 0:
		return nil, nil
	}
	s := int64((d + time.Second - 1) / time.Second)
	return &s, nil
}

// defaultHolder names who holds a lease when --holder is not given:
// user@host, which is what an operator looking at `devalloc leases` wants.
func defaultHolder() string {
	user := os.Getenv("USER")
	if user == "" {
		user = os.Getenv("USERNAME")
	}
	host, _ := os.Hostname()
	switch {
	case user != "" && host != "":
		return user + "@" + host
	case host != "":
		return host
	}
	return user
}
