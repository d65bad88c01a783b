//go:build unix

package poolping

import (
	"errors"
	"syscall"
)

// peekSpoke peeks one byte without blocking: a byte or EOF means the
// server spoke; EAGAIN means nothing to read (healthy).
func peekSpoke(raw syscall.RawConn) bool {
	spoke := false
	var buf [1]byte
	// Control, not Read: Read would wait on the poller for data.
	cerr := raw.Control(func(fd uintptr) {
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == nil:
			spoke = true // a byte pending, or 0 bytes: EOF
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EWOULDBLOCK), errors.Is(err, syscall.EINTR):
			// Nothing to read: healthy.
		default:
			spoke = true // ECONNRESET and the like: the socket is broken
		}
	})
	return cerr == nil && spoke
}
