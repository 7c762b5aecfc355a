package agent

import (
	"fmt"
	"os"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"banger/internal/session"
)

// openPTY opens a new PTY of the given size. The master comes back
// pollable: pty's ioctls go through File.Fd, which puts a file in
// blocking mode, and an exec session needs read deadlines on the master
// to stop waiting for output that a background process may never send,
// and a Close that interrupts a blocked write.
func openPTY(size session.WindowSize) (master, tty *os.File, err error) {
	m, tty, err := pty.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("open a pty: %w", err)
	}
	if err := pty.Setsize(tty, &pty.Winsize{Rows: size.Rows, Cols: size.Cols}); err != nil {
		m.Close()
		tty.Close()
		return nil, nil, fmt.Errorf("set the size of %s: %w", tty.Name(), err)
	}
	master, err = pollable(m)
	if err != nil {
		tty.Close()
		return nil, nil, fmt.Errorf("open a pty: %w", err)
	}
	return master, tty, nil
}

// pollable returns f anew as a file under Go's poller, and closes f.
func pollable(f *os.File) (*os.File, error) {
	defer f.Close()
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	// NewFile puts a non-blocking descriptor under the poller.
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// setWindow resizes the PTY of master without taking its descriptor out
// of the poller.
func setWindow(master *os.File, size session.WindowSize) error {
	rc, err := master.SyscallConn()
	if err != nil {
		return err
	}
	var ioctlErr error
	err = rc.Control(func(fd uintptr) {
		ioctlErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: size.Rows, Col: size.Cols})
	})
	if err != nil {
		return err
	}
	return ioctlErr
}
