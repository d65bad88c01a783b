package db

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// IsTransient reports whether err says the database could not serve the
// request just now — the connection dropped, the server is restarting or
// refusing connections, a statement or lock timed out, a deadlock or
// serialization failure — so the same request may well succeed shortly.
// Such errors are the server's trouble, not the caller's mistake: callers
// retry them while they may still wait, and report them as "unavailable,
// retry later", never as internal errors.
func IsTransient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, errNotRegistered) || errors.Is(err, errJoinUndecided) || errors.Is(err, errHandoffUnsettled) ||
		errors.Is(err, errLeaseUnderProbe) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"): // connection exception
			return true
		case strings.HasPrefix(pgErr.Code, "57P"): // admin/crash shutdown, cannot connect now
			return true
		}
		switch pgErr.Code {
		case "40001", // serialization_failure
			"40P01", // deadlock_detected
			"55P03", // lock_not_available (lock_timeout)
			"57014", // query_canceled (statement_timeout)
			"53300": // too_many_connections
			return true
		}
		return false
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connectErr) ||
		errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, pgconn.ErrConnClosed) ||
		pgconn.SafeToRetry(err)
}

// retryPause bounds the pauses between attempts that failed transiently.
const (
	retryPauseMin = 100 * time.Millisecond
	retryPauseMax = time.Second
)

// pauseForRetry waits d (or less, if the window closes first) before an
// attempt is retried after a transient failure. It reports false when
// waiting is over (window closed or ctx ended).
func pauseForRetry(ctx context.Context, window waitWindow, d time.Duration) bool {
	d = min(d, window.remaining())
	if d <= 0 {
		return false
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
		return false
	}
	return window.remaining() > 0 && ctx.Err() == nil
}

// mayWaitOut tells whether a request may wait out err rather than answer
// with it: err is transient, and the request is still there, may still
// wait, and its instance is not draining. Both retries of an acquire's
// statements (stepRetry, retryQueueStep) ask it.
func (a *Allocator) mayWaitOut(ctx context.Context, window waitWindow, err error) bool {
	return ctx.Err() == nil && IsTransient(err) && window.remaining() > 0 && !a.isDraining()
}

// stepRetry decides whether a step of one acquire waits out a transient
// database failure (a dropped connection, a restart, a timeout) rather than
// return it: only while the request may still wait. Its pauses double from
// retryPauseMin up to retryPauseMax, across the steps before the line (the
// line retries its statements with retryQueueStep).
type stepRetry struct {
	a      *Allocator
	pool   string
	window waitWindow
	pause  time.Duration
}

func (a *Allocator) newStepRetry(pool string, window waitWindow) *stepRetry {
	return &stepRetry{a: a, pool: pool, window: window, pause: retryPauseMin}
}

// again pauses before another try of the step that failed with err, and
// reports whether to make it.
func (r *stepRetry) again(ctx context.Context, err error) bool {
	if !r.a.mayWaitOut(ctx, r.window, err) {
		return false
	}
	r.a.log.Warn("acquire attempt failed; retrying", "pool", r.pool, "err", err, "in", r.pause)
	ok := pauseForRetry(ctx, r.window, r.pause)
	r.pause = min(r.pause*2, retryPauseMax)
	return ok
}

// reset starts the pauses over: the database answered.
func (r *stepRetry) reset() { r.pause = retryPauseMin }
