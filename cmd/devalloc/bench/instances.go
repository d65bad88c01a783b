package bench

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Instances are the devalloc servers a scenario drives: servers that
// already run (Wrap) or "devalloc serve" processes the bench started
// (Spawn). Either way they share one database, and Key is an admin key on
// it: scenarios register devices and acquire with it.
type Instances struct {
	urls []string
	key  string

	// Set by Spawn only.
	procs    []*process
	appNames []string // application_name of each instance's connections
	logDir   string
	ownDir   bool // logDir is a temporary directory of ours
}

// Wrap uses running instances at urls (e.g. "http://127.0.0.1:8080"),
// authenticating with key, an admin key. The bench knows nothing of their
// processes: PID and RSS are unknown, and their database connections are
// counted together as everything connected to the database except the
// bench's own monitor.
func Wrap(key string, urls ...string) *Instances {
	out := &Instances{key: key}
	for _, u := range urls {
		out.urls = append(out.urls, strings.TrimRight(u, "/"))
	}
	return out
}

// Len is the number of instances.
func (in *Instances) Len() int { return len(in.urls) }

// URL is instance i's base URL, without a trailing slash.
func (in *Instances) URL(i int) string { return in.urls[i] }

// URLs are all base URLs.
func (in *Instances) URLs() []string { return append([]string(nil), in.urls...) }

// Key is the admin key the scenarios use.
func (in *Instances) Key() string { return in.key }

// Spawned reports whether the bench started the instances (so PID, RSS
// and per-instance connection counts are known).
func (in *Instances) Spawned() bool { return in.procs != nil }

// PID is instance i's process id, 0 when the bench did not start it.
func (in *Instances) PID(i int) int {
	if in.procs == nil {
		return 0
	}
	return in.procs[i].cmd.Process.Pid
}

// AppName is the application_name instance i's database connections
// carry, "" when the bench did not start it.
func (in *Instances) AppName(i int) string {
	if in.appNames == nil {
		return ""
	}
	return in.appNames[i]
}

// AppNames are the application_names of all instances, nil when the bench
// did not start them.
func (in *Instances) AppNames() []string { return append([]string(nil), in.appNames...) }

// LogPath is the file that instance i's stderr goes to, "" when the bench
// did not start it.
func (in *Instances) LogPath(i int) string {
	if in.procs == nil {
		return ""
	}
	return in.procs[i].logPath
}

// RSS is instance i's resident memory in bytes (VmRSS), 0 with no error
// when the bench did not start it.
func (in *Instances) RSS(i int) (int64, error) {
	pid := in.PID(i)
	if pid == 0 {
		return 0, nil
	}
	return rssOf(pid)
}

// rssOf reads VmRSS from /proc/<pid>/status.
func rssOf(pid int) (int64, error) {
	path := "/proc/" + strconv.Itoa(pid) + "/status"
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("read RSS: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		// "VmRSS:	   12345 kB"
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("read RSS: %s: unexpected line %q", path, sc.Text())
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("read RSS: %s: %w", path, err)
		}
		return kb * 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read RSS: %s: %w", path, err)
	}
	return 0, fmt.Errorf("read RSS: no VmRSS in %s", path)
}

// Stop ends the spawned instances (SIGTERM, then SIGKILL for any still
// running after a few seconds) and removes the temporary log directory
// unless an instance failed, whose log the error then names. It does
// nothing for wrapped instances, and may be called more than once.
func (in *Instances) Stop() error {
	var errs []error
	for _, p := range in.procs {
		if err := p.stop(stopGrace); err != nil {
			errs = append(errs, fmt.Errorf("%w (log: %s)", err, p.logPath))
		}
	}
	if len(errs) == 0 && in.ownDir && in.logDir != "" {
		if err := os.RemoveAll(in.logDir); err != nil {
			errs = append(errs, fmt.Errorf("remove instance logs: %w", err))
		}
		in.logDir = ""
	}
	return errors.Join(errs...)
}
