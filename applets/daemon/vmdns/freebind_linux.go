package vmdns

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// freebind lets a socket bind an address the host does not have yet
// (IP_FREEBIND, no privilege needed): the daemon binds the bridge's
// address before the helper makes the bridge, or while a reset has
// removed it, and the socket answers whenever the address is there.
func freebind(network, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		switch network {
		case "udp6", "tcp6":
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
		default:
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}
