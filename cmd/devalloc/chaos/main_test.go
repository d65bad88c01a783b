//go:build chaos

package chaos

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// devallocBin is the devalloc binary under test, built once per run.
var devallocBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "devalloc-chaos-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	devallocBin = filepath.Join(dir, "devalloc")
	started := time.Now()
	if err := buildDevalloc(devallocBin); err != nil {
		fmt.Fprintln(os.Stderr, "chaos: build devalloc:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "chaos: built %s in %v\n", devallocBin, time.Since(started).Round(time.Millisecond))
	code := m.Run()
	// The harness itself must not leak: every client, sampler, device
	// listener and process waiter ends with its scenario, failed or not.
	if err := goleak.Find(); err != nil {
		fmt.Fprintln(os.Stderr, "chaos: goroutine leak in the harness:", err)
		code = 1
	} else {
		fmt.Fprintln(os.Stderr, "chaos: no goroutine leaked")
	}
	return code
}

// buildDevalloc builds ./cmd/devalloc (the package above this one) into
// out. DEVALLOC_CHAOS_RACE=1 builds it with the race detector.
func buildDevalloc(out string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return err
	}
	args := []string{"build", "-o", out}
	if os.Getenv("DEVALLOC_CHAOS_RACE") == "1" {
		args = append(args, "-race")
	}
	args = append(args, "github.com/devalloc/devalloc/cmd/devalloc")
	cmd := exec.Command(goTool, args...)
	cmd.Dir = ".."
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, b)
	}
	return nil
}
