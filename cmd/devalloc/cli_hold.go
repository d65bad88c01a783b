package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/devalloc/devalloc/httpapi/client"
)

// Exit codes of "acquire -- command" besides the command's own.
const (
	// exitLeaseLost: the lease ended while the command ran (expired,
	// revoked, or could not be renewed in time); the command was stopped.
	// EX_TEMPFAIL: the run may be retried.
	exitLeaseLost = 75
	// exitCannotExecute and exitNotFound are what shells answer.
	exitCannotExecute = 126
	exitNotFound      = 127
)

// minRenewInterval keeps very short TTLs from renewing in a busy loop.
const minRenewInterval = 100 * time.Millisecond

// hold runs a command while holding a lease: it renews the lease in the
// background, passes signals on to the command, stops the command if the
// lease is lost, and releases the lease when the command ends.
type hold struct {
	api        *client.ClientWithResponses
	cf         *clientFlags
	lease      client.Lease
	ttlSeconds *int64 // what to renew with; nil: the server's default
	grace      time.Duration
	stderr     io.Writer // safe for concurrent use
}

// run returns the exit code for devalloc: the command's, or exitLeaseLost,
// exitCannotExecute or exitNotFound; the error, if any, is to be printed.
func (h *hold) run(ctx context.Context, command []string, stdout io.Writer, sigs <-chan os.Signal) (int, error) {
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdin = os.Stdin
	cmd.Stdout = stdout
	cmd.Stderr = h.stderr
	cmd.Env = append(os.Environ(), h.env()...)
	// If the command is killed while a child of its own keeps its output
	// open, stop waiting for that output after a while.
	cmd.WaitDelay = h.grace
	if err := cmd.Start(); err != nil {
		if rerr := h.release(); rerr != nil {
			fmt.Fprintf(h.stderr, "devalloc: releasing lease %s failed (it ends at its TTL): %s\n", h.lease.ID, oneLine(rerr))
		}
		code := exitCannotExecute
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
			code = exitNotFound
		}
		return code, fmt.Errorf("cannot run %s: %w", command[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	renewCtx, stopRenewing := context.WithCancel(context.WithoutCancel(ctx))
	lost := make(chan error, 1)
	var renewing sync.WaitGroup
	renewing.Go(func() { h.renew(renewCtx, lost) })

	var (
		lostErr error
		killAt  <-chan time.Time
		done    = ctx.Done()
	)
	terminate := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if killAt == nil {
			killAt = time.After(h.grace)
		}
	}
wait:
	for {
		select {
		case <-exited:
			break wait
		case sig := <-sigs:
			// From a terminal the command got Ctrl-C itself too (same
			// process group); from kill or a CI runner only devalloc did.
			_ = cmd.Process.Signal(sig)
		case <-done:
			done = nil
			terminate()
		case lostErr = <-lost:
			fmt.Fprintf(h.stderr, "devalloc: LEASE LOST: %s. Device %s may be someone else's now: stopping %s (SIGTERM, SIGKILL after %s)\n",
				oneLine(lostErr), h.lease.Device.Name, command[0], h.grace)
			terminate()
		case <-killAt:
			fmt.Fprintf(h.stderr, "devalloc: %s still runs %s after SIGTERM: killing it\n", command[0], h.grace)
			_ = cmd.Process.Kill()
		}
	}
	stopRenewing()
	renewing.Wait()
	if lostErr == nil {
		select {
		case lostErr = <-lost: // found while the command was ending
			fmt.Fprintf(h.stderr, "devalloc: LEASE LOST: %s\n", oneLine(lostErr))
		default:
		}
	}
	code := exitCodeOf(cmd.ProcessState)
	if lostErr != nil {
		return exitLeaseLost, nil
	}
	return h.releaseAtEnd(code), nil
}

// releaseAtEnd releases the lease after the command ended with code and
// returns devalloc's exit code: code, or exitLeaseLost if the release shows
// the lease had ended already (revoked or expired between two renewals).
func (h *hold) releaseAtEnd(code int) int {
	err := h.release()
	var p *client.Problem
	switch {
	case err == nil:
		return code
	case errors.As(err, &p) && p.StatusCode == http.StatusGone:
		fmt.Fprintf(h.stderr, "devalloc: LEASE LOST: %s, before the command finished. Device %s may have been someone else's meanwhile\n",
			oneLine(err), h.lease.Device.Name)
		return exitLeaseLost
	default:
		fmt.Fprintf(h.stderr, "devalloc: releasing lease %s failed (it ends at its TTL): %s\n", h.lease.ID, oneLine(err))
		return code
	}
}

func (h *hold) release() error {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	r, err := h.api.ReleaseLeaseWithResponse(ctx, h.lease.ID)
	if err != nil {
		return h.cf.reachError(err)
	}
	return client.CheckResponse(r.HTTPResponse, r.Body)
}

// renew keeps the lease alive every ttl/3 until ctx ends. It reports on
// lost when the lease is gone: the server says it ended (410) or is not
// ours to renew (401, 403, 404), or no renewal succeeded before it would
// have expired. Other failures are retried.
func (h *hold) renew(ctx context.Context, lost chan<- error) {
	// Both times are the server's, so clock skew does not matter here.
	ttl := h.lease.ExpiresAt.Sub(h.lease.AcquiredAt)
	interval := max(ttl/3, minRenewInterval)
	retry := min(max(interval/3, minRenewInterval), 5*time.Second)
	deadline := time.Now().Add(ttl) // a little late: the lease began before we heard of it
	next := interval
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(next):
		}
		sent := time.Now()
		reqCtx, cancel := context.WithTimeout(ctx, max(interval, time.Second))
		r, err := h.api.RenewLeaseWithResponse(reqCtx, h.lease.ID, client.RenewLeaseRequest{TTLSeconds: h.ttlSeconds})
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			err = h.cf.reachError(err)
		} else {
			err = client.CheckResponse(r.HTTPResponse, r.Body)
		}
		if err == nil {
			deadline = sent.Add(ttl)
			next = interval
			continue
		}
		var p *client.Problem
		if errors.As(err, &p) {
			switch p.StatusCode {
			case http.StatusGone, http.StatusNotFound, http.StatusForbidden, http.StatusUnauthorized:
				lost <- err
				return
			}
		}
		if !time.Now().Before(deadline) {
			lost <- fmt.Errorf("lease %s expired: no renewal succeeded in time (last: %s)", h.lease.ID, oneLine(err))
			return
		}
		fmt.Fprintf(h.stderr, "devalloc: renewing lease %s failed, retrying: %s\n", h.lease.ID, oneLine(err))
		next = min(retry, time.Until(deadline))
	}
}

// env is what the command learns about its device.
func (h *hold) env() []string {
	l := h.lease
	labels, _ := json.Marshal(l.Device.Labels) // a map of strings always marshals
	return []string{
		"DEVALLOC_LEASE_ID=" + l.ID.String(),
		"DEVALLOC_DEVICE_NAME=" + l.Device.Name,
		"DEVALLOC_DEVICE_POOL=" + l.Device.Pool,
		"DEVALLOC_DEVICE_ADDRESS=" + l.Device.Address,
		"DEVALLOC_DEVICE_LABELS=" + string(labels),
		"DEVALLOC_FENCING_TOKEN=" + strconv.FormatInt(l.FencingToken, 10),
		"DEVALLOC_URL=" + h.cf.url,
	}
}

// exitCodeOf is the command's exit code, 128+n when signal n ended it (as
// shells report it).
func exitCodeOf(ps *os.ProcessState) int {
	if ps == nil {
		return 1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// lockWriter makes w safe for the command's output copier and devalloc's
// own messages to share. Files are left alone: the command then writes to
// them directly (and still sees a terminal as a terminal).
func lockWriter(w io.Writer) io.Writer {
	if _, ok := w.(*os.File); ok {
		return w
	}
	return &lockedWriter{w: w}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
