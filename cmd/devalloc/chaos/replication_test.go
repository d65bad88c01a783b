//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/devalloc/devalloc/db/dbtest/pgcluster"
	"github.com/jackc/pgx/v5"
)

// standbyName is the standby's application_name, the name the primary's
// synchronous_standby_names gives when replication is synchronous.
const standbyName = "standby1"

// replicatedPair is a primary and a streaming standby made from it with
// pg_basebackup -R, each a private cluster. The standby streams through a
// proxy of the harness's (the network between the two), which can stall
// the stream and cut it.
type replicatedPair struct {
	primary, standby *pgcluster.Cluster
	proxy            *walProxy
	sync             bool
	// url is the multi-host URL of the pair's maintenance database with
	// target_session_attrs=read-write: it reaches whichever is primary.
	url string
}

// startReplicatedPair starts a primary, makes a standby of it and waits
// until the standby streams (as a synchronous standby when sync).
func startReplicatedPair(t *testing.T, sync bool) *replicatedPair {
	t.Helper()
	pgcluster.SkipWithout(t, "initdb", "pg_ctl", "pg_basebackup")
	pgcluster.Sweep(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	p := &replicatedPair{sync: sync, primary: pgcluster.NewDir(t)}
	p.primary.Settings = []string{"wal_level=replica", "max_wal_senders=4", "synchronous_commit=on"}
	if sync {
		// Asynchronous is the default (an empty list).
		p.primary.Settings = append(p.primary.Settings, "synchronous_standby_names="+standbyName)
	}
	if out, err := p.primary.Command(ctx, "initdb", "-D", p.primary.Data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	if err := p.primary.Start(ctx); err != nil {
		t.Fatalf("primary: %v", err)
	}
	var err error
	if p.proxy, err = startWALProxy(fmt.Sprintf("127.0.0.1:%d", p.primary.Port)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.proxy.close)

	p.standby = pgcluster.NewDir(t)
	if out, err := p.standby.Command(ctx, "pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(p.primary.Port), "-U", "postgres",
		"-D", p.standby.Data, "-R", "-X", "stream", "-c", "fast", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	// -R wrote a primary_conninfo to the primary itself; this later line
	// wins: through the proxy, under the name the primary waits for.
	auto, err := os.OpenFile(filepath.Join(p.standby.Data, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fmt.Fprintf(auto, "primary_conninfo = 'host=127.0.0.1 port=%d user=postgres application_name=%s'\n", p.proxy.port(), standbyName)
	if cerr := auto.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := p.standby.Start(ctx); err != nil {
		t.Fatalf("standby: %v", err)
	}
	want := "async"
	if sync {
		want = "sync"
	}
	if err := p.waitStreaming(ctx, want); err != nil {
		t.Fatal(err)
	}
	p.url = fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable&target_session_attrs=read-write&connect_timeout=3",
		p.primary.Port, p.standby.Port)
	return p
}

// waitStreaming waits (30 s at most) until the primary sees the standby
// streaming with sync_state want.
func (p *replicatedPair) waitStreaming(ctx context.Context, want string) error {
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		state, err := queryString(ctx, p.primary.URL,
			`SELECT coalesce((SELECT state || '/' || sync_state FROM pg_stat_replication WHERE application_name = $1), 'not connected')`, standbyName)
		if err == nil && state == "streaming/"+want {
			return nil
		}
		last = state
		if err != nil {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the standby is not streaming as %s after 30s (pg_stat_replication: %s)", want, last)
}

// killPrimary is pg_ctl stop -m immediate: every server process of the
// primary quits at once, with no checkpoint and no last WAL sent.
func (p *replicatedPair) killPrimary(ctx context.Context) error {
	return p.primary.Stop(ctx, "immediate")
}

// promote is pg_ctl promote -w: the standby ends recovery and accepts
// writes when it returns.
func (p *replicatedPair) promote(ctx context.Context) error {
	out, err := p.standby.Command(ctx, "pg_ctl", "-D", p.standby.Data, "-w", "-t", "60", "promote").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl promote: %v: %s", err, out)
	}
	return nil
}

// queryString runs a one-value query on a fresh harness connection to u.
func queryString(ctx context.Context, u, sql string, args ...any) (string, error) {
	cfg, err := harnessConnConfig(u)
	if err != nil {
		return "", err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var s string
	err = conn.QueryRow(ctx, sql, args...).Scan(&s)
	return s, err
}

// walProxy is the network between the primary and the standby: it
// forwards the replication connection, and can stall the primary's stream
// (the WAL piles up unsent, as behind a congested link) or cut every
// connection and refuse new ones (a partition).
type walProxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	conns   []net.Conn
	stalled bool
	cut     bool
	resume  chan struct{} // closed when a stall ends (or the cut)
	wg      sync.WaitGroup
}

func startWALProxy(target string) (*walProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	x := &walProxy{ln: ln, target: target, resume: make(chan struct{})}
	close(x.resume)
	x.wg.Go(x.accept)
	return x, nil
}

func (x *walProxy) port() int { return x.ln.Addr().(*net.TCPAddr).Port }

func (x *walProxy) accept() {
	for {
		c, err := x.ln.Accept()
		if err != nil {
			return
		}
		d, err := net.DialTimeout("tcp", x.target, 2*time.Second)
		x.mu.Lock()
		if err != nil || x.cut {
			x.mu.Unlock()
			c.Close()
			if d != nil {
				d.Close()
			}
			continue
		}
		x.conns = append(x.conns, c, d)
		x.mu.Unlock()
		x.wg.Go(func() { _, _ = io.Copy(d, c); d.Close() })
		x.wg.Go(func() { x.forward(c, d); c.Close() })
	}
}

// forward copies the primary's stream to the standby, holding each chunk
// while the proxy is stalled (and dropping it if the proxy is cut).
func (x *walProxy) forward(to, from net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			x.mu.Lock()
			resume := x.resume
			x.mu.Unlock()
			<-resume
			x.mu.Lock()
			cut := x.cut
			x.mu.Unlock()
			if cut {
				return
			}
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// stall stops forwarding the primary's stream until the cut.
func (x *walProxy) stall() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.stalled && !x.cut {
		x.stalled = true
		x.resume = make(chan struct{})
	}
}

// partition drops what was held, closes every connection and refuses new
// ones: the standby never gets more of the old primary's WAL.
func (x *walProxy) partition() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.cut {
		return
	}
	x.cut = true
	for _, c := range x.conns {
		c.Close()
	}
	x.conns = nil
	if x.stalled {
		close(x.resume)
	}
}

func (x *walProxy) close() {
	x.partition()
	x.ln.Close()
	x.wg.Wait()
}
