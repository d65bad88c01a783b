package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/devalloc/devalloc/db/dbtest"
)

// TestSpawn builds the real binary and drives one spawned instance: a
// device, one acquire and release, its connections found by
// application_name, a few waiters with memory per waiter, and a clean stop.
func TestSpawn(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the devalloc binary")
	}
	bin := filepath.Join(t.TempDir(), "devalloc")
	build := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "github.com/devalloc/devalloc/cmd/devalloc")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dbURL := dbtest.NewDB(t)
	in, err := Spawn(t.Context(), SpawnOptions{Binary: bin, N: 1, DatabaseURL: dbURL, MaxConns: 3})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = in.Stop()
		}
	})
	db, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)

	if !in.Spawned() || in.Len() != 1 || in.PID(0) == 0 || in.AppName(0) != "devalloc-bench-0" {
		t.Fatalf("instances: spawned %v, %d, pid %d, app %q", in.Spawned(), in.Len(), in.PID(0), in.AppName(0))
	}
	if rss, err := in.RSS(0); err != nil || rss < 1<<20 {
		t.Errorf("RSS %d, %v", rss, err)
	}

	c := newClient(in.Key(), 1)
	defer c.close()
	if err := registerDevices(t.Context(), c, in.URL(0), "bench-spawn", 1, "none", "127.0.0.1:9", nil); err != nil {
		t.Fatal(err)
	}
	lease, err := c.acquire(t.Context(), in.URL(0), encode(acquireRequest{Pool: "bench-spawn"}))
	if err != nil {
		t.Fatal(err)
	}
	if lease.Device.Name != "bench-spawn-0" {
		t.Errorf("leased %q", lease.Device.Name)
	}
	if err := c.release(t.Context(), in.URL(0), lease.ID); err != nil {
		t.Fatal(err)
	}

	// serve keeps the URL's application_name on its connections.
	mon, err := openMonitor(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	byName, err := mon.conns(t.Context(), in.AppNames())
	mon.close()
	if err != nil {
		t.Fatal(err)
	}
	// At least the LISTEN connection and one pool connection.
	if n := byName["devalloc-bench-0"]; n < 2 {
		t.Errorf("connections named devalloc-bench-0: %v", byName)
	}

	res, err := Waiters(t.Context(), WaitersOptions{
		Instances: in, DB: db, Waiters: 20, LoadAt: []int{5},
		LoadWindow: 200 * time.Millisecond, Settle: -1, Timeout: 20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Served != 20 || res.Errors != 0 || len(res.RSSPerWaiterBytes) != 1 ||
		len(res.ConnsPerInstance) != 1 || res.ConnsPerInstance[0] < 2 || res.ConnsPerInstance[0] > 4 {
		t.Errorf("waiters: %+v", res)
	}

	logPath := in.LogPath(0)
	stopped = true
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(logPath); !os.IsNotExist(err) {
		t.Errorf("temporary log %s not removed: %v", logPath, err)
	}
	if err := in.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestSpawnReportsAnInstanceThatCannotStart(t *testing.T) {
	dir := t.TempDir()
	// A "binary" that fails at once, as serve does on a bad flag.
	bin := filepath.Join(dir, "devalloc")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho 'bad flag' >&2\nexit 2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Spawn(t.Context(), SpawnOptions{Binary: bin, DatabaseURL: "postgres://x@127.0.0.1:1/x", LogDir: dir})
	if err == nil || !strings.Contains(err.Error(), "exited while starting") || !strings.Contains(err.Error(), "bad flag") {
		t.Fatalf("error: %v", err)
	}
}

func TestWithAppName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://u@h:5432/db?sslmode=disable", "postgres://u@h:5432/db?application_name=devalloc-bench-1&sslmode=disable"},
		{"postgresql://u@h/db?application_name=old", "postgresql://u@h/db?application_name=devalloc-bench-1"},
		{"host=h dbname=db", "host=h dbname=db application_name=devalloc-bench-1"},
	} {
		got, err := withAppName(tc.in, "devalloc-bench-1")
		if err != nil || got != tc.want {
			t.Errorf("withAppName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestWithoutEnv(t *testing.T) {
	got := withoutEnv([]string{"A=1", "DATABASE_URL=x", "B=2=3", "DEVALLOC_ADMIN_KEY=s"}, "DATABASE_URL", "DEVALLOC_ADMIN_KEY")
	if strings.Join(got, " ") != "A=1 B=2=3" {
		t.Errorf("got %v", got)
	}
}

func TestRSSOfThisProcess(t *testing.T) {
	rss, err := rssOf(os.Getpid())
	if err != nil || rss < 1<<20 {
		t.Errorf("rss %d, %v", rss, err)
	}
	if in := Wrap("k", "http://x"); in.PID(0) != 0 || in.LogPath(0) != "" || in.AppName(0) != "" || in.Stop() != nil {
		t.Error("wrapped instances have process details")
	}
}
