//go:build chaos

package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// harnessApp is the application_name of the harness's own connections, so
// that connection counts and pg_terminate_backend leave them out.
const harnessApp = "chaos-harness"

// sharedServerURL is the shared PostgreSQL server (a maintenance database on
// it): TEST_DATABASE_URL, else 127.0.0.1:5432 as postgres.
func sharedServerURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// withDatabase is u naming database name instead.
func withDatabase(u, name string) string {
	pu, err := url.Parse(u)
	if err != nil {
		panic(err)
	}
	pu.Path = "/" + name
	return pu.String()
}

// withParams is u with the query parameters params ("a=1&b=2") added.
func withParams(u, params string) string {
	if params == "" {
		return u
	}
	if strings.Contains(u, "?") {
		return u + "&" + params
	}
	return u + "?" + params
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// harnessConnConfig parses u for a harness connection: tagged with
// harnessApp, and immune to the database-level timeouts a scenario sets
// (startup-packet settings win over ALTER DATABASE ... SET).
func harnessConnConfig(u string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = harnessApp
	cfg.RuntimeParams["statement_timeout"] = "0"
	cfg.RuntimeParams["lock_timeout"] = "0"
	cfg.RuntimeParams["idle_in_transaction_session_timeout"] = "0"
	cfg.ConnectTimeout = 5 * time.Second
	return cfg, nil
}

// database is one scenario's database, with a small pool of harness
// connections on it for the checks and the DBA-style faults.
type database struct {
	name      string
	serverURL string // the maintenance database on the same server
	url       string // what the instances connect to
	admin     *pgxpool.Pool
}

// newDatabase creates a fresh database on the server of serverURL and drops
// it (WITH (FORCE)) when the test ends.
func newDatabase(t *testing.T, serverURL string) *database {
	t.Helper()
	d := &database{name: "chaos_" + randomHex(6), serverURL: serverURL}
	d.url = withDatabase(serverURL, d.name)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := execOn(ctx, serverURL, "CREATE DATABASE "+d.name); err != nil {
		t.Fatalf("create database %s: %v", d.name, err)
	}
	cfg, err := pgxpool.ParseConfig(d.url)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := harnessConnConfig(d.url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig = hc
	cfg.MaxConns = 4
	if d.admin, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := execOn(ctx, serverURL, "DROP DATABASE IF EXISTS "+d.name+" WITH (FORCE)"); err != nil {
			t.Logf("drop database %s: %v", d.name, err)
		}
	})
	return d
}

// execOn runs one statement on a fresh harness connection to u.
func execOn(ctx context.Context, u, sql string) error {
	cfg, err := harnessConnConfig(u)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// terminateAll ends every connection to the database but the harness's
// own: the instances' pools and their LISTEN connections alike.
func (d *database) terminateAll(ctx context.Context) (int, error) {
	var n int
	err := d.admin.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
		FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()
		  AND application_name IS DISTINCT FROM $1`, harnessApp).Scan(&n)
	return n, err
}

// connSample is one look at the database's connections (the harness's own
// left out).
type connSample struct {
	total int
	// idleInTx is how many sessions sit idle in a transaction, and
	// oldestIdleInTx how long the oldest has.
	idleInTx       int
	oldestIdleInTx time.Duration
}

func (d *database) sampleConns(ctx context.Context) (connSample, error) {
	var s connSample
	var oldest float64
	err := d.admin.QueryRow(ctx, `
		SELECT count(*),
		       count(*) FILTER (WHERE state LIKE 'idle in transaction%'),
		       coalesce(extract(epoch FROM max(now() - state_change) FILTER (WHERE state LIKE 'idle in transaction%')), 0)::float8
		FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()
		  AND application_name IS DISTINCT FROM $1
		  AND backend_type = 'client backend'`, harnessApp).Scan(&s.total, &s.idleInTx, &oldest)
	s.oldestIdleInTx = time.Duration(oldest * float64(time.Second))
	return s, err
}

// pgBinDir is where initdb and pg_ctl live.
func pgBinDir() string {
	if d := os.Getenv("DEVALLOC_PG_BIN"); d != "" {
		return d
	}
	return "/usr/lib/postgresql/15/bin"
}

// privateCluster is a PostgreSQL cluster of the harness's own, in a temp
// dir under /tmp, on a spare port: the one scenario that restarts
// PostgreSQL uses it, so the shared server is never disturbed.
type privateCluster struct {
	dir, data string
	port      int
	url       string // its maintenance database
	asRoot    bool
	owner     *user.User
	// settings are extra "-c name=value" server settings of every start
	// (a replication scenario's primary and standby differ in them).
	settings []string
}

func startPrivateCluster(t *testing.T) *privateCluster {
	t.Helper()
	skipWithoutPostgres(t, "initdb")
	sweepPrivateClusters(t)
	c := newClusterDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := c.pgCommand(ctx, "initdb", "-D", c.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	if err := c.start(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// skipWithoutPostgres skips the test, saying why, where the PostgreSQL
// programs it needs are not installed (CI has them).
func skipWithoutPostgres(t *testing.T, progs ...string) {
	t.Helper()
	for _, prog := range progs {
		if _, err := os.Stat(filepath.Join(pgBinDir(), prog)); err != nil {
			t.Skipf("no %s in %s (install PostgreSQL 15 or set DEVALLOC_PG_BIN): %v", prog, pgBinDir(), err)
		}
	}
}

// newClusterDir makes the temp dir of a private cluster (owned by postgres
// when run as root) on a spare port, without creating the cluster itself;
// the cluster is stopped and the dir removed when the test ends.
func newClusterDir(t *testing.T) *privateCluster {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "devalloc-chaos-pg-")
	if err != nil {
		t.Fatal(err)
	}
	c := &privateCluster{dir: dir, data: filepath.Join(dir, "data"), asRoot: os.Geteuid() == 0}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = c.stop(ctx, "immediate")
		os.RemoveAll(dir)
	})
	if c.asRoot {
		// PostgreSQL refuses to run as root: the cluster belongs to postgres.
		if c.owner, err = user.Lookup("postgres"); err != nil {
			t.Fatalf("running as root needs a postgres user for the private cluster: %v", err)
		}
		uid, _ := strconv.Atoi(c.owner.Uid)
		gid, _ := strconv.Atoi(c.owner.Gid)
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
	if c.port, err = freePort("127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	c.url = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
	return c
}

// sweepPrivateClusters stops and removes the private clusters of earlier
// runs that ended without their cleanup (go test's -timeout panics past
// every t.Cleanup, and the postmaster outlives the test process).
func sweepPrivateClusters(t *testing.T) {
	dirs, _ := filepath.Glob("/tmp/devalloc-chaos-pg-*")
	for _, dir := range dirs {
		// Only those whose test process is gone: another run's cluster
		// may be in use.
		if b, err := os.ReadFile(filepath.Join(dir, "harness.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && syscall.Kill(pid, 0) == nil {
				continue
			}
		}
		c := &privateCluster{dir: dir, data: filepath.Join(dir, "data"), asRoot: os.Geteuid() == 0}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := c.stop(ctx, "immediate"); err != nil {
			t.Logf("stale private cluster %s: %v", dir, err)
		}
		cancel()
		os.RemoveAll(dir)
	}
}

// pgCommand runs a PostgreSQL program as the cluster's owner.
func (c *privateCluster) pgCommand(ctx context.Context, prog string, args ...string) *exec.Cmd {
	path := filepath.Join(pgBinDir(), prog)
	var cmd *exec.Cmd
	if c.asRoot {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = c.dir
	return cmd
}

// start starts the cluster and waits until it accepts connections.
func (c *privateCluster) start(ctx context.Context) error {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100", c.port, c.dir)
	for _, s := range c.settings {
		opts += " -c " + s
	}
	// Output to a file, not a pipe: the postmaster outlives pg_ctl.
	out, err := os.OpenFile(filepath.Join(c.dir, "pg_ctl.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := c.pgCommand(ctx, "pg_ctl", "-D", c.data, "-l", filepath.Join(c.dir, "postgres.log"), "-w", "-t", "60", "-o", opts, "start")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(filepath.Join(c.dir, "postgres.log"))
		return fmt.Errorf("pg_ctl start: %v\n%s", err, tail(string(b), 2000))
	}
	return nil
}

// stop stops the cluster; mode is pg_ctl's -m (fast, immediate).
func (c *privateCluster) stop(ctx context.Context, mode string) error {
	if _, err := os.Stat(filepath.Join(c.data, "postmaster.pid")); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if out, err := c.pgCommand(ctx, "pg_ctl", "-D", c.data, "-m", mode, "-w", "-t", "60", "stop").CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl stop: %v: %s", err, out)
	}
	return nil
}

// freePort is a TCP port on ip that was free a moment ago.
func freePort(ip string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// tail is the last n bytes of s, cut at a line start.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return "..." + s
}
