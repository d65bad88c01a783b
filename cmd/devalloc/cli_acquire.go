package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/google/uuid"

	"github.com/devalloc/devalloc/httpapi/client"
)

// acquireMargin is how much longer than --wait an acquire request may take
// (the server answers 503 when the wait is over; probes and the network
// add a little).
const acquireMargin = time.Minute

type acquireConfig struct {
	cf     clientFlags
	pool   string
	labels labelsFlag
	wait   time.Duration
	ttl    time.Duration
	holder string
	grace  time.Duration
}

// runAcquire is "devalloc acquire [flags] [-- command args...]": take a
// device, then either print the lease or run the command while holding it.
func runAcquire(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("acquire", "acquire [--pool P] [--label k=v]... [--wait 5m] [--ttl 10m] [flags] [-- command [args...]]", stderr)
	var c acquireConfig
	c.cf.register(fs)
	fs.stringVar(&c.pool, "pool", "DEVALLOC_POOL", "default", "pool to take a device from")
	fs.labelsVar(&c.labels, "label", "DEVALLOC_LABELS", "label the device must have, key=value; repeat for more (the variable: comma-separated)")
	fs.durationVar(&c.wait, "wait", "DEVALLOC_WAIT", 0, "how long to wait for a matching device to become free (0: answer at once)")
	fs.durationVar(&c.ttl, "ttl", "DEVALLOC_TTL", 0, "lease lifetime, whole seconds (0: the server's default); with a command it is renewed every ttl/3")
	fs.stringVar(&c.holder, "holder", "DEVALLOC_HOLDER", defaultHolder(), "who holds the device, shown by devalloc leases (e.g. a CI job URL)")
	fs.durationVar(&c.grace, "grace", "DEVALLOC_GRACE", 10*time.Second, "if the lease is lost, how long the command has after SIGTERM before SIGKILL")
	if err := fs.parse(args); err != nil {
		return err
	}
	command := fs.Args()
	waitSeconds, err := seconds("wait", c.wait)
	if err != nil {
		return err
	}
	ttlSeconds, err := seconds("ttl", c.ttl)
	if err != nil {
		return err
	}
	api, err := c.cf.connect(fs)
	if err != nil {
		return err
	}
	req := client.AcquireLeaseRequest{Pool: &c.pool, WaitSeconds: waitSeconds, TTLSeconds: ttlSeconds}
	if len(c.labels.labels) > 0 {
		req.Labels = &c.labels.labels
	}
	if c.holder != "" {
		req.Holder = &c.holder
	}

	// SIGINT/SIGTERM: while waiting, give up the wait; while a command
	// runs, pass them on to it.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	lease, err := c.acquire(ctx, api, req, sigs, stderr)
	if err != nil {
		return err
	}
	if len(command) == 0 {
		if c.cf.json {
			return printJSON(stdout, lease)
		}
		return printLease(stdout, *lease, time.Now())
	}
	h := &hold{api: api, cf: &c.cf, lease: *lease, ttlSeconds: ttlSeconds, grace: c.grace, stderr: lockWriter(stderr)}
	code, err := h.run(ctx, command, lockWriter(stdout), sigs)
	return exitCodeError{code: code, err: err}
}

// acquire asks for the lease, showing progress while the server waits for
// a device. A signal, or ctx ending, gives up the wait; a lease granted
// just as that happened is released again.
func (c *acquireConfig) acquire(ctx context.Context, api *client.ClientWithResponses, req client.AcquireLeaseRequest, sigs <-chan os.Signal, stderr io.Writer) (*client.Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, c.wait+acquireMargin)
	defer cancel()
	interrupted := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		select {
		case <-sigs:
			close(interrupted)
			cancel()
		case <-ctx.Done():
		}
	}()

	var prog *progress
	if c.wait > 0 {
		prog = startProgress(stderr, selectorText(c.pool, c.labels.labels), c.wait)
	}
	r, err := c.post(ctx, api, req, stderr)
	if prog != nil {
		prog.end()
	}
	cancel()
	<-watchDone
	select {
	case <-interrupted:
		if err == nil && r.JSON201 != nil {
			c.releaseQuietly(api, r.JSON201, stderr)
		}
		return nil, context.Canceled
	default:
	}
	if err != nil {
		return nil, c.cf.reachError(err)
	}
	if err := client.CheckResponse(r.HTTPResponse, r.Body); err != nil {
		return nil, err
	}
	if r.JSON201 == nil {
		return nil, errors.New("the server granted a lease but sent no lease")
	}
	return r.JSON201, nil
}

// acquireAttempts bounds how often an acquire is sent when the connection
// breaks before the answer arrives.
const acquireAttempts = 3

// post sends the acquire with an Idempotency-Key, so that when the
// connection breaks after the request may have reached the server (a
// reset, a proxy timing out a long-poll), sending it again is safe: the
// server answers with the lease the first request got, or joins the wait
// it is in, and never grants a second device.
func (c *acquireConfig) post(ctx context.Context, api *client.ClientWithResponses, req client.AcquireLeaseRequest, stderr io.Writer) (*client.AcquireLeaseResponse, error) {
	params := &client.AcquireLeaseParams{IdempotencyKey: ptr(uuid.NewString())}
	waitUntil := time.Now().Add(c.wait)
	for attempt := 1; ; attempt++ {
		r, err := api.AcquireLeaseWithResponse(ctx, params, req)
		if err == nil || ctx.Err() != nil || attempt == acquireAttempts || neverSent(err) {
			return r, err
		}
		fmt.Fprintf(stderr, "devalloc: acquire got no answer (%s); asking again\n", reachReason(err))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
		if req.WaitSeconds != nil {
			left := max(time.Until(waitUntil), 0)
			req.WaitSeconds = ptr(int64((left + time.Second - 1) / time.Second))
		}
	}
}

// neverSent reports whether err happened before the request could reach
// the server (nothing listens there, unknown host), so that a retry cannot
// find anything the first attempt did.
func neverSent(err error) bool {
	var op *net.OpError
	var dns *net.DNSError
	return (errors.As(err, &op) && op.Op == "dial") || errors.As(err, &dns)
}

func ptr[T any](v T) *T { return &v }

// releaseQuietly gives back a lease nobody will use, reporting only a
// failure (the lease then ends at its TTL).
func (c *acquireConfig) releaseQuietly(api *client.ClientWithResponses, l *client.Lease, stderr io.Writer) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	r, err := api.ReleaseLeaseWithResponse(ctx, l.ID)
	if err == nil {
		err = client.CheckResponse(r.HTTPResponse, r.Body)
	}
	if err != nil {
		fmt.Fprintf(stderr, "devalloc: releasing lease %s failed (it ends at its TTL): %s\n", l.ID, oneLine(err))
	}
}

// selectorText is what an acquire asks for, for people: pool android with
// model=pixel-7.
func selectorText(pool string, labels map[string]string) string {
	s := "pool " + pool
	if len(labels) > 0 {
		s += " with " + labelString(labels)
	}
	return s
}
