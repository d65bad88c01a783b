package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"

	"github.com/devalloc/devalloc/httpapi/client"
)

// The client commands talk to a devalloc server over its HTTP API, through
// the generated Go client (httpapi/client). They need no database.

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
