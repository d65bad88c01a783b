//go:build chaos

package chaos

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/devalloc/devalloc/db/dbtest/pgcluster"
	"github.com/devalloc/devalloc/httpapi/client"
)

// Instance states, as the harness sees them.
const (
	stateDown   int32 = iota // not running (killed, stopped, not started)
	stateUp                  // running; clients may use it
	stateFrozen              // SIGSTOPped
)

// instance is one "devalloc serve" process on its own loopback address
// (127.0.0.N), restartable on the same address.
type instance struct {
	idx     int
	addr    string // 127.0.0.N:port
	base    string // http://addr
	logPath string
	args    []string
	env     []string

	admin, client *client.ClientWithResponses

	state atomic.Int32
	// epoch changes whenever the process is killed, stopped, frozen or
	// started: a request that saw it change was disturbed by the harness.
	epoch atomic.Int64

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{} // closed when the current process has exited
	exitErr  error
	starts   int
	expected bool // the current process is meant to end (the harness ends it)
}

// start runs the process and waits until /readyz answers 200.
func (in *instance) start(ctx context.Context) error {
	in.mu.Lock()
	logf, err := os.OpenFile(in.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		in.mu.Unlock()
		return err
	}
	fmt.Fprintf(logf, "==== chaos: start #%d at %s\n", in.starts+1, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(devallocBin, in.args...)
	cmd.Env = in.env
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group (a Ctrl-C of the test does not reach it) and
	// killed with the test process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		in.mu.Unlock()
		return err
	}
	in.starts++
	in.cmd = cmd
	in.expected = false
	exited := make(chan struct{})
	in.exited = exited
	in.epoch.Add(1)
	in.mu.Unlock()
	go func() {
		err := cmd.Wait()
		in.mu.Lock()
		in.exitErr = err
		in.mu.Unlock()
		close(exited)
	}()

	deadline := time.Now().Add(30 * time.Second)
	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	for {
		resp, err := hc.Get(in.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				in.state.Store(stateUp)
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("instance %d exited while starting (%v); log:\n%s", in.idx, in.exitErr, in.logTail(3000))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("instance %d not ready within 30s; log:\n%s", in.idx, in.logTail(3000))
		}
	}
}

func (in *instance) pid() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.cmd == nil || in.cmd.Process == nil {
		return 0
	}
	return in.cmd.Process.Pid
}

// running reports whether the current process is alive.
func (in *instance) running() bool {
	in.mu.Lock()
	exited := in.exited
	in.mu.Unlock()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// exitedOnItsOwn reports whether the process ended without the harness
// ending it, with its exit error.
func (in *instance) exitedOnItsOwn() (bool, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.exited == nil || in.expected {
		return false, nil
	}
	select {
	case <-in.exited:
		return true, in.exitErr
	default:
		return false, nil
	}
}

func (in *instance) signal(sig syscall.Signal) error {
	pid := in.pid()
	if pid == 0 {
		return fmt.Errorf("instance %d: not started", in.idx)
	}
	return syscall.Kill(pid, sig)
}

// markGoing marks the process as ended by the harness before the signal is
// sent, so clients stop picking it and in-flight requests count as
// disturbed.
func (in *instance) markGoing() {
	in.mu.Lock()
	in.expected = true
	in.mu.Unlock()
	in.state.Store(stateDown)
	in.epoch.Add(1)
}

// kill is kill -9, and waits for the process to be gone.
func (in *instance) kill() error {
	in.markGoing()
	if err := in.signal(syscall.SIGKILL); err != nil {
		return err
	}
	return in.waitExit(10 * time.Second)
}

// terminate sends SIGTERM and waits up to limit for the process to exit;
// it returns how long the exit took and the exit error.
func (in *instance) terminate(limit time.Duration) (time.Duration, error) {
	in.markGoing()
	start := time.Now()
	if err := in.signal(syscall.SIGTERM); err != nil {
		return 0, err
	}
	if err := in.waitExit(limit); err != nil {
		return time.Since(start), err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return time.Since(start), in.exitErr
}

func (in *instance) waitExit(limit time.Duration) error {
	in.mu.Lock()
	exited := in.exited
	in.mu.Unlock()
	select {
	case <-exited:
		return nil
	case <-time.After(limit):
		return fmt.Errorf("instance %d still running %v after the signal", in.idx, limit)
	}
}

// freeze is SIGSTOP: the process and its open transactions stand still.
func (in *instance) freeze() error {
	in.state.Store(stateFrozen)
	in.epoch.Add(1)
	return in.signal(syscall.SIGSTOP)
}

// thaw is SIGCONT; the instance is offered to clients again at once.
func (in *instance) thaw() error {
	err := in.signal(syscall.SIGCONT)
	in.epoch.Add(1)
	in.state.Store(stateUp)
	return err
}

// shutdown ends the process for good at the end of a scenario.
func (in *instance) shutdown() {
	if !in.running() {
		return
	}
	in.markGoing()
	_ = in.signal(syscall.SIGCONT)
	_ = in.signal(syscall.SIGTERM)
	if in.waitExit(10*time.Second) != nil {
		_ = in.signal(syscall.SIGKILL)
		_ = in.waitExit(10 * time.Second)
	}
}

// rssKB is the process's resident set (VmRSS) in KiB, 0 if unknown.
func (in *instance) rssKB() int64 {
	pid := in.pid()
	if pid == 0 {
		return 0
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fields := strings.Fields(rest)
			if len(fields) > 0 {
				n, _ := strconv.ParseInt(fields[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// logTail is the end of the instance's log (all its runs).
func (in *instance) logTail(n int) string {
	b, err := os.ReadFile(in.logPath)
	if err != nil {
		return err.Error()
	}
	return pgcluster.Tail(string(b), n)
}

// logCount counts log lines that contain every one of subs.
func (in *instance) logCount(subs ...string) int {
	b, err := os.ReadFile(in.logPath)
	if err != nil {
		return 0
	}
	n := 0
	for line := range strings.Lines(string(b)) {
		ok := true
		for _, s := range subs {
			if !strings.Contains(line, s) {
				ok = false
				break
			}
		}
		if ok {
			n++
		}
	}
	return n
}
