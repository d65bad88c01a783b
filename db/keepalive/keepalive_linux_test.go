package keepalive

import (
	"net"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"
)

func TestApplyTakesLibpqSettingsOutOfTheRuntimeParams(t *testing.T) {
	cfg, err := pgx.ParseConfig("postgres://u@h/d?keepalives_idle=7&keepalives_interval=2&keepalives_count=4&tcp_user_timeout=9000&application_name=x")
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(&cfg.Config); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"application_name": "x", "tcp_keepalives_idle": "7", "tcp_keepalives_interval": "2",
		"tcp_keepalives_count": "4", "tcp_user_timeout": "9000",
	}
	for k, v := range want {
		if cfg.RuntimeParams[k] != v {
			t.Errorf("runtime param %s = %q, want %q", k, cfg.RuntimeParams[k], v)
		}
	}
	for k := range cfg.RuntimeParams {
		if strings.HasPrefix(k, "keepalives") {
			t.Errorf("libpq's %s would go to the server", k)
		}
	}
	bad, _ := pgx.ParseConfig("postgres://u@h/d?keepalives_idle=soon")
	if err := Apply(&bad.Config); err == nil {
		t.Error("keepalives_idle=soon was accepted")
	}
	off, _ := pgx.ParseConfig("postgres://u@h/d?keepalives=0")
	if err := Apply(&off.Config); err != nil {
		t.Fatal(err)
	}
	if _, set := off.RuntimeParams["tcp_keepalives_idle"]; set {
		t.Error("keepalives=0 still asks the server for keepalives")
	}
}

// (Linux: the socket options read back are Linux's.) A real connection has the settings on both ends: the client's socket
// options and the server's session parameters.
func TestConnectionsProbeBothWays(t *testing.T) {
	url := os.Getenv("TEST_DATABASE_URL")
	if url == "" {
		t.Skip("TEST_DATABASE_URL not set")
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(cfg.Host, "/") {
		t.Skip("a Unix-domain socket has no TCP settings")
	}
	if err := Apply(&cfg.Config); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	for k, want := range map[string]string{"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3", "tcp_user_timeout": "30000"} {
		var got string
		if err := conn.QueryRow(t.Context(), "SHOW "+k).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("server's %s = %q, want %q", k, got, want)
		}
	}
	tcp, ok := conn.PgConn().Conn().(*net.TCPConn)
	if !ok {
		t.Fatalf("connection is %T, want TCP", conn.PgConn().Conn())
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	raw.Control(func(fd uintptr) {
		got["TCP_KEEPIDLE"], _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		got["TCP_KEEPINTVL"], _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
		got["TCP_KEEPCNT"], _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
		got["TCP_USER_TIMEOUT"], _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
		got["SO_KEEPALIVE"], _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
	})
	for k, want := range map[string]int{"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3, "TCP_USER_TIMEOUT": 30000, "SO_KEEPALIVE": 1} {
		if got[k] != want {
			t.Errorf("client socket %s = %d, want %d", k, got[k], want)
		}
	}
}
