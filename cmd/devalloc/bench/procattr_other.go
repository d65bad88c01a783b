//go:build !unix

package bench

import "syscall"

// procAttr: no process-group control off Unix.
func procAttr() *syscall.SysProcAttr { return nil }
