//go:build !unix

package poolping

import "syscall"

// peekSpoke cannot peek here; pgxpool's default (ping after a second
// idle) and the safe retry in package db still apply.
func peekSpoke(syscall.RawConn) bool { return false }
