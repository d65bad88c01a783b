// Package keepalive makes every connection devalloc opens notice a peer
// that vanished without a FIN or RST (a host crash, a network partition)
// within seconds, on both ends.
//
// pgx v5 parses none of libpq's keepalives, keepalives_idle,
// keepalives_interval, keepalives_count and tcp_user_timeout: left in a
// connection string it would send them to the server as run-time
// parameters, which the server refuses (all but tcp_user_timeout are
// unknown to it). Apply takes them out of the parsed configuration and
// dials with them instead, with defaults when the URL sets none; it also
// asks the server, per session, to probe the client the same way
// (tcp_keepalives_idle/interval/count and tcp_user_timeout), since it is
// the server's side that keeps a crashed instance's session, and its
// liveness lock, for hours otherwise.
package keepalive

import (
	"fmt"
	"net"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Settings are libpq's TCP settings of a connection.
type Settings struct {
	Enabled  bool          // keepalives (libpq: 1 or 0)
	Idle     time.Duration // keepalives_idle: silence before the first probe
	Interval time.Duration // keepalives_interval: between unanswered probes
	Count    int           // keepalives_count: unanswered probes before the connection is dead
	// UserTimeout (tcp_user_timeout, milliseconds in a URL) bounds how long
	// sent data may stay unacknowledged before the connection is dead; 0
	// leaves the system's default. Keepalives do not cover that case: they
	// only start when nothing is in flight.
	UserTimeout time.Duration
}

// Defaults: a vanished peer is noticed within about 25 s when idle
// (10 s + 3 x 5 s) and 30 s with data in flight, well inside devalloc's
// heartbeat bound (3 x 10 s by default).
var Defaults = Settings{Enabled: true, Idle: 10 * time.Second, Interval: 5 * time.Second, Count: 3, UserTimeout: 30 * time.Second}

// libpq's names of the settings, in a connection string.
const (
	paramKeepalives  = "keepalives"
	paramIdle        = "keepalives_idle"
	paramInterval    = "keepalives_interval"
	paramCount       = "keepalives_count"
	paramUserTimeout = "tcp_user_timeout"
)

// Apply reads the settings from cfg's run-time parameters (where pgx left
// them), removes them, and sets cfg.DialFunc to dial with them (keeping
// cfg.ConnectTimeout); settings the URL does not name keep their Defaults.
// When keepalives are on it also sets the server-side equivalents as
// session parameters, unless the URL sets them itself.
func Apply(cfg *pgconn.Config) error {
	s, err := parse(cfg.RuntimeParams)
	if err != nil {
		return err
	}
	dialer := &net.Dialer{Timeout: cfg.ConnectTimeout}
	if s.Enabled {
		dialer.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: s.Idle, Interval: s.Interval, Count: s.Count}
	} else {
		dialer.KeepAlive = -1
	}
	if s.UserTimeout > 0 {
		dialer.Control = userTimeoutControl(s.UserTimeout)
	}
	cfg.DialFunc = dialer.DialContext
	if s.Enabled {
		secs := func(d time.Duration) string { return strconv.Itoa(int(d.Round(time.Second) / time.Second)) }
		for k, v := range map[string]string{
			"tcp_keepalives_idle":     secs(s.Idle),
			"tcp_keepalives_interval": secs(s.Interval),
			"tcp_keepalives_count":    strconv.Itoa(s.Count),
			"tcp_user_timeout":        strconv.FormatInt(s.UserTimeout.Milliseconds(), 10),
		} {
			if _, set := cfg.RuntimeParams[k]; !set {
				cfg.RuntimeParams[k] = v
			}
		}
	}
	return nil
}

// parse takes libpq's TCP settings out of params.
func parse(params map[string]string) (Settings, error) {
	s := Defaults
	take := func(name string) (int, bool, error) {
		v, ok := params[name]
		if !ok {
			return 0, false, nil
		}
		delete(params, name)
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return 0, false, fmt.Errorf("invalid %s %q: want a whole number, 0 or more", name, v)
		}
		return n, true, nil
	}
	if n, ok, err := take(paramKeepalives); err != nil {
		return s, err
	} else if ok {
		s.Enabled = n != 0
	}
	if n, ok, err := take(paramIdle); err != nil {
		return s, err
	} else if ok && n > 0 {
		s.Idle = time.Duration(n) * time.Second
	}
	if n, ok, err := take(paramInterval); err != nil {
		return s, err
	} else if ok && n > 0 {
		s.Interval = time.Duration(n) * time.Second
	}
	if n, ok, err := take(paramCount); err != nil {
		return s, err
	} else if ok && n > 0 {
		s.Count = n
	}
	if n, ok, err := take(paramUserTimeout); err != nil {
		return s, err
	} else if ok {
		s.UserTimeout = time.Duration(n) * time.Millisecond
	}
	return s, nil
}

// userTimeoutControl sets TCP_USER_TIMEOUT on a TCP socket before it
// connects (Linux; see sockopt_*.go). Unix-domain sockets are left alone.
func userTimeoutControl(d time.Duration) func(network, address string, c syscall.RawConn) error {
	ms := int(d.Milliseconds())
	return func(network, _ string, c syscall.RawConn) error {
		if network != "tcp" && network != "tcp4" && network != "tcp6" {
			return nil
		}
		var serr error
		if err := c.Control(func(fd uintptr) { serr = setUserTimeout(fd, ms) }); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set TCP_USER_TIMEOUT: %w", serr)
		}
		return nil
	}
}
