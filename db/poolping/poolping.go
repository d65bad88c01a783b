// Package poolping finds pooled connections the server has already closed
// before a statement is sent on them.
//
// When a backend is terminated (pg_terminate_backend, a restart, a
// failover) the server sends an error and closes the socket, but the idle
// pooled connection notices nothing: the next statement is written
// successfully and only its read finds the server's goodbye (57P01). pgx
// cannot tell that the statement never ran, so pgconn.SafeToRetry is false
// and the request fails. pgxpool's default pings only connections idle for
// more than a second, which misses a cut that happened just before.
//
// ShouldPing looks at the socket without blocking: a healthy idle
// connection has nothing to read, so it costs one non-blocking recv; a
// connection the server spoke on (pending bytes or EOF) is pinged, fails
// the ping, and pgxpool replaces it with a fresh one before the caller gets
// it.
package poolping

import (
	"context"
	"crypto/tls"
	"net"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// defaultIdle is pgxpool's own rule, kept: connections idle longer than
// this are pinged anyway (catching peers that vanished without a word).
const defaultIdle = time.Second

// ShouldPing is a pgxpool.Config.ShouldPing: ping when pgxpool's default
// would, or when the server already spoke on the idle connection.
func ShouldPing(_ context.Context, p pgxpool.ShouldPingParams) bool {
	if p.IdleDuration > defaultIdle {
		return true
	}
	return ServerSpoke(p.Conn.PgConn().Conn())
}

// Apply installs ShouldPing on cfg.
func Apply(cfg *pgxpool.Config) { cfg.ShouldPing = ShouldPing }

// ServerSpoke reports whether an idle connection has bytes to read or was
// closed by its peer. An idle PostgreSQL connection should have neither;
// either means the session is over (or at least worth a ping). It never
// blocks; when the socket cannot be inspected it says false (pgxpool's
// default behaviour).
func ServerSpoke(c net.Conn) bool {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	return peekSpoke(raw)
}
