package bench

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// SpawnOptions say which "devalloc serve" processes Spawn starts.
type SpawnOptions struct {
	// Binary is the devalloc executable (e.g. os.Executable()). Required.
	Binary string
	// N is the number of instances; default 1.
	N int
	// DatabaseURL is the database every instance serves from (DATABASE_URL).
	// Required. Each instance's copy gets its own application_name.
	DatabaseURL string
	// MaxConns is --max-conns; 0 leaves serve's default (10).
	MaxConns int
	// MaxWaitingPerKey is --max-waiting-per-key. The scenarios acquire
	// with one key, so it must exceed the waiters one instance holds;
	// default 100000.
	MaxWaitingPerKey int
	// AdminKey is the admin key's secret (DEVALLOC_ADMIN_KEY); "" makes a
	// random one.
	AdminKey string
	// Args are more serve flags, appended after the bench's own (so they
	// win), e.g. "--recheck-interval", "2s".
	Args []string
	// LogDir receives each instance's stderr as instance-<i>.log; "" uses a
	// temporary directory that Stop removes unless an instance failed.
	LogDir string
	// AppNamePrefix names the instances' connections in pg_stat_activity:
	// instance i is <prefix><i>. Default "devalloc-bench-".
	AppNamePrefix string
	// StartTimeout bounds the wait for every /readyz; default 60 s.
	StartTimeout time.Duration
}

// Defaults of SpawnOptions.
const (
	defaultMaxWaitingPerKey = 100_000
	defaultAppNamePrefix    = "devalloc-bench-"
	defaultStartTimeout     = 60 * time.Second
	// stopGrace is how long an instance may take to shut down after
	// SIGTERM before it is killed; waiters are drained at once, so a
	// healthy instance exits well within it.
	stopGrace = 5 * time.Second
)

// Spawn starts o.N instances on free loopback ports and returns once each
// answers /readyz with 200. On error, whatever it started is stopped.
func Spawn(ctx context.Context, o SpawnOptions) (*Instances, error) {
	if o.Binary == "" || o.DatabaseURL == "" {
		return nil, errors.New("spawn instances: Binary and DatabaseURL are required")
	}
	o.N = max(o.N, 1)
	if o.MaxWaitingPerKey <= 0 {
		o.MaxWaitingPerKey = defaultMaxWaitingPerKey
	}
	if o.AppNamePrefix == "" {
		o.AppNamePrefix = defaultAppNamePrefix
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = defaultStartTimeout
	}
	if o.AdminKey == "" {
		o.AdminKey = randomSecret()
	}
	in := &Instances{key: o.AdminKey, logDir: o.LogDir}
	if in.logDir == "" {
		dir, err := os.MkdirTemp("", "devalloc-bench-")
		if err != nil {
			return nil, fmt.Errorf("spawn instances: log directory: %w", err)
		}
		in.logDir, in.ownDir = dir, true
	}
	for i := range o.N {
		appName := o.AppNamePrefix + strconv.Itoa(i)
		p, addr, err := startProcess(o, i, appName, in.logDir)
		if err != nil {
			_ = in.Stop()
			return nil, err
		}
		in.procs = append(in.procs, p)
		in.appNames = append(in.appNames, appName)
		in.urls = append(in.urls, "http://"+addr)
	}
	// The instances migrate and start in parallel (goose's advisory lock
	// orders the migrations); wait for all of them.
	readyCtx, cancel := context.WithTimeout(ctx, o.StartTimeout)
	defer cancel()
	errs := make([]error, len(in.procs))
	var wg sync.WaitGroup
	for i, p := range in.procs {
		wg.Go(func() { errs[i] = p.waitReady(readyCtx, in.urls[i]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		// Stop keeps the logs when an instance failed; keep them in any case
		// here, since the error cites them.
		in.ownDir = false
		_ = in.Stop()
		return nil, fmt.Errorf("spawn instances: %w", err)
	}
	return in, nil
}

// startProcess starts instance i on a free loopback port.
func startProcess(o SpawnOptions, i int, appName, logDir string) (*process, string, error) {
	addr, err := freeLoopbackAddr()
	if err != nil {
		return nil, "", fmt.Errorf("spawn instance %d: %w", i, err)
	}
	dsn, err := withAppName(o.DatabaseURL, appName)
	if err != nil {
		return nil, "", fmt.Errorf("spawn instance %d: %w", i, err)
	}
	args := []string{"serve", "--addr", addr, "--max-waiting-per-key", strconv.Itoa(o.MaxWaitingPerKey)}
	if o.MaxConns > 0 {
		args = append(args, "--max-conns", strconv.Itoa(o.MaxConns))
	}
	args = append(args, o.Args...)

	logPath := fmt.Sprintf("%s/instance-%d.log", logDir, i)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, "", fmt.Errorf("spawn instance %d: %w", i, err)
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(o.Binary, args...)
	// The secret goes through the environment: flags show in ps.
	cmd.Env = append(withoutEnv(os.Environ(), "DATABASE_URL", "DEVALLOC_ADMIN_KEY"),
		"DATABASE_URL="+dsn, "DEVALLOC_ADMIN_KEY="+o.AdminKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("spawn instance %d: %w", i, err)
	}
	p := &process{idx: i, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.exitErr = cmd.Wait()
		close(p.exited)
	}()
	return p, addr, nil
}

// process is one spawned "devalloc serve".
type process struct {
	idx     int
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed once the process is gone
	exitErr error         // set before exited closes

	stopOnce sync.Once
	stopErr  error
}

// waitReady polls /readyz until it answers 200, the process exits or ctx
// ends.
func (p *process) waitReady(ctx context.Context, base string) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
		if err != nil {
			return err
		}
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.exited:
			return fmt.Errorf("instance %d exited while starting (%v); log: %s\n%s", p.idx, p.exitErr, p.logPath, logTail(p.logPath, 2000))
		case <-ctx.Done():
			return fmt.Errorf("instance %d not ready at %s: %w; log: %s\n%s", p.idx, base, ctx.Err(), p.logPath, logTail(p.logPath, 2000))
		case <-tick.C:
		}
	}
}

// stop sends SIGTERM and waits up to grace, then kills. An instance that
// had already exited on its own, or exited with an error, is reported.
func (p *process) stop(grace time.Duration) error {
	p.stopOnce.Do(func() {
		select {
		case <-p.exited:
			p.stopErr = fmt.Errorf("instance %d had exited on its own: %v", p.idx, p.exitErr)
			return
		default:
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			_ = p.cmd.Process.Kill()
		}
		select {
		case <-p.exited:
			if p.exitErr != nil {
				p.stopErr = fmt.Errorf("instance %d: %v", p.idx, p.exitErr)
			}
			return
		case <-time.After(grace):
		}
		_ = p.cmd.Process.Kill()
		<-p.exited
		p.stopErr = fmt.Errorf("instance %d still running %s after SIGTERM; killed", p.idx, grace)
	})
	return p.stopErr
}

// withAppName sets application_name in a database URL or keyword/value
// DSN. pgx sends it as a startup parameter on every connection the
// instance opens (pool and LISTEN alike), which is how pg_stat_activity
// tells the instances apart.
func withAppName(dsn, name string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("database URL: %w", err)
		}
		q := u.Query()
		q.Set("application_name", name)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// Keyword/value form: a later setting wins over an earlier one.
	return strings.TrimSpace(dsn) + " application_name=" + name, nil
}

// withoutEnv drops the named variables from env.
func withoutEnv(env []string, names ...string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, n := range names {
			drop = drop || k == n
		}
		if !drop {
			out = append(out, kv)
		}
	}
	return out
}

// freeLoopbackAddr finds a port nobody listens on. Another process could
// take it before the instance binds it; the instance then fails to start
// and says so in its log.
func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	return addr, nil
}

// randomSecret is an admin key secret for one bench run.
func randomSecret() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go ≥ 1.24)
	return "dva_bench_" + base64.RawURLEncoding.EncodeToString(b)
}

// logTail is the end of a log file, for error messages.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
