//go:build !linux

package keepalive

// setUserTimeout: TCP_USER_TIMEOUT is Linux's; elsewhere keepalives alone
// bound a vanished peer.
func setUserTimeout(fd uintptr, ms int) error { return nil }
