package rpc

import (
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// peerOf reads the connecting process's credentials (SO_PEERCRED) as the
// kernel recorded them at connect time; they cannot be forged by the peer.
func peerOf(conn net.Conn) (Peer, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return Peer{}, errors.New("not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if credErr != nil {
		return Peer{}, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	return Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}, nil
}

// watchHangup calls cancel when the peer of conn closes the connection
// while its call runs, and returns when done is closed. A half-close
// (shutdown of the peer's write side) is not a hang-up: the peer still
// waits for the answer, so only POLLHUP, set when both directions are shut,
// counts.
func watchHangup(conn net.Conn, cancel func(), done <-chan struct{}) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return
	}
	hungUp := func() bool {
		var hup bool
		raw.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
			if n, err := unix.Poll(fds, 0); err == nil && n > 0 {
				hup = fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0
			}
		})
		return hup
	}
	// Block in Read (no goroutine spins while the peer waits quietly); Read
	// returns on data, EOF, or the deadline set when the call is done. The
	// caller cleared the request's read deadline before calling us.
	buf := make([]byte, 512)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			continue // bytes after the request are ignored
		}
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return
		}
		break
	}
	// EOF or error: either the peer is gone or it only half-closed.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if hungUp() {
			cancel()
			return
		}
		select {
		case <-done:
			return
		case <-tick.C:
		}
	}
}
