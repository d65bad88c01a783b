// Package pgcluster gives a test a PostgreSQL cluster of its own, in a
// temp dir under /tmp on a spare port, for the faults that must not touch
// the shared server: a restart, a crash, a failover. The fault harness
// (cmd/devalloc/chaos) and the history checker (db) both use it.
//
// Running as root (as CI does), the cluster belongs to the postgres user,
// since PostgreSQL refuses to run as root.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dirPattern names the clusters' temp dirs, so that Sweep finds those that
// outlived their test.
const dirPattern = "devalloc-chaos-pg-"

// Cluster is one private cluster.
type Cluster struct {
	Dir  string // the temp dir: sockets, logs
	Data string // the data directory
	Port int
	URL  string // its maintenance database, as postgres
	// Settings are extra "name=value" server settings of every start (a
	// replication scenario's primary and standby differ in them).
	Settings []string

	asRoot bool
}

// BinDir is where initdb and pg_ctl live: DEVALLOC_PG_BIN, else Debian's
// PostgreSQL 15.
func BinDir() string {
	if d := os.Getenv("DEVALLOC_PG_BIN"); d != "" {
		return d
	}
	return "/usr/lib/postgresql/15/bin"
}

// Start creates a cluster (initdb) and starts it. It is stopped and removed
// when the test ends. The test is skipped where PostgreSQL's programs are
// not installed.
func Start(t testing.TB) *Cluster {
	t.Helper()
	SkipWithout(t, "initdb", "pg_ctl")
	Sweep(t)
	c := NewDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := c.Command(ctx, "initdb", "-D", c.Data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// Available reports whether PostgreSQL's programs are installed, so a test
// can choose a private cluster where it can have one.
func Available() bool {
	for _, prog := range []string{"initdb", "pg_ctl"} {
		if _, err := os.Stat(filepath.Join(BinDir(), prog)); err != nil {
			return false
		}
	}
	return true
}

// SkipWithout skips the test, saying why, where the PostgreSQL programs it
// needs are not installed (CI has them).
func SkipWithout(t testing.TB, progs ...string) {
	t.Helper()
	for _, prog := range progs {
		if _, err := os.Stat(filepath.Join(BinDir(), prog)); err != nil {
			t.Skipf("no %s in %s (install PostgreSQL 15 or set DEVALLOC_PG_BIN): %v", prog, BinDir(), err)
		}
	}
}

// NewDir makes the temp dir of a cluster (owned by postgres when run as
// root) on a spare port, without creating the cluster itself; the cluster
// is stopped and the dir removed when the test ends.
func NewDir(t testing.TB) *Cluster {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", dirPattern)
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Dir: dir, Data: filepath.Join(dir, "data"), asRoot: os.Geteuid() == 0}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = c.Stop(ctx, "immediate")
		os.RemoveAll(dir)
	})
	if c.asRoot {
		owner, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs a postgres user for the private cluster: %v", err)
		}
		uid, _ := strconv.Atoi(owner.Uid)
		gid, _ := strconv.Atoi(owner.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "harness.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatal(err)
	}
	if c.Port, err = FreePort("127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	c.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.Port)
	return c
}

// Sweep stops and removes the private clusters of earlier runs that ended
// without their cleanup (go test's -timeout panics past every t.Cleanup,
// and the postmaster outlives the test process).
func Sweep(t testing.TB) {
	dirs, _ := filepath.Glob(filepath.Join("/tmp", dirPattern+"*"))
	for _, dir := range dirs {
		// Only those whose test process is gone: another run's cluster
		// may be in use.
		if b, err := os.ReadFile(filepath.Join(dir, "harness.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && syscall.Kill(pid, 0) == nil {
				continue
			}
		}
		c := &Cluster{Dir: dir, Data: filepath.Join(dir, "data"), asRoot: os.Geteuid() == 0}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := c.Stop(ctx, "immediate"); err != nil {
			t.Logf("stale private cluster %s: %v", dir, err)
		}
		cancel()
		os.RemoveAll(dir)
	}
}

// Command runs a PostgreSQL program as the cluster's owner.
func (c *Cluster) Command(ctx context.Context, prog string, args ...string) *exec.Cmd {
	path := filepath.Join(BinDir(), prog)
	var cmd *exec.Cmd
	if c.asRoot {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = c.Dir
	return cmd
}

// Start starts the cluster and waits until it accepts connections.
func (c *Cluster) Start(ctx context.Context) error {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100", c.Port, c.Dir)
	for _, s := range c.Settings {
		opts += " -c " + s
	}
	// Output to a file, not a pipe: the postmaster outlives pg_ctl.
	out, err := os.OpenFile(filepath.Join(c.Dir, "pg_ctl.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := c.Command(ctx, "pg_ctl", "-D", c.Data, "-l", filepath.Join(c.Dir, "postgres.log"), "-w", "-t", "60", "-o", opts, "start")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(filepath.Join(c.Dir, "postgres.log"))
		return fmt.Errorf("pg_ctl start: %v\n%s", err, Tail(string(b), 2000))
	}
	return nil
}

// Stop stops the cluster; mode is pg_ctl's -m (smart, fast, immediate).
func (c *Cluster) Stop(ctx context.Context, mode string) error {
	if _, err := os.Stat(filepath.Join(c.Data, "postmaster.pid")); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if out, err := c.Command(ctx, "pg_ctl", "-D", c.Data, "-m", mode, "-w", "-t", "60", "stop").CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl stop: %v: %s", err, out)
	}
	return nil
}

// FreePort is a TCP port on ip that was free a moment ago.
func FreePort(ip string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Tail is the last n bytes of s, cut at a line start.
func Tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return "..." + s
}
