package keepalive

import "golang.org/x/sys/unix"

// setUserTimeout sets TCP_USER_TIMEOUT (milliseconds) on fd.
func setUserTimeout(fd uintptr, ms int) error {
	return unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, ms)
}
