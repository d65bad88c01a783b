package bench

import "syscall"

// procAttr puts a spawned instance in its own process group, so a Ctrl-C
// at the terminal reaches only the bench (which then stops the instances
// in order), and has the kernel kill it if the bench dies first, so no
// server outlives a crashed bench.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
