//go:build unix && !linux

package bench

import "syscall"

// procAttr puts a spawned instance in its own process group, so a Ctrl-C
// at the terminal reaches only the bench, which then stops the instances
// in order. (Only Linux can also tie the child's life to the bench's.)
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
