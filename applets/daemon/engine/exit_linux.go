package engine

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// watchExit returns a channel closed when process pid exits. The process
// need not be our child (after a daemon restart it is not): a pidfd
// becomes readable when its process ends, and Go's poller waits on it
// without holding a thread. Kernels without pidfd_open (before 5.3) fall
// back to looking at /proc. stop ends the watch early (closing the
// channel), for a process that turned out not to be ours.
func watchExit(pid int) (exited <-chan struct{}, stop func(), err error) {
	done := make(chan struct{})
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ENOSYS) {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
			return nil, nil, err
		}
		quit := make(chan struct{})
		go pollExit(pid, done, quit)
		var once sync.Once
		return done, func() { once.Do(func() { close(quit) }) }, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("pidfd_open: %w", err)
	}
	f := os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(pid))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	go func() {
		defer close(done)
		// Read returns when the callback says the process is gone, or
		// with an error once stop closed f.
		rc.Read(func(fd uintptr) bool {
			p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(p, 0)
			return err != nil || n > 0
		})
		f.Close()
	}()
	return done, func() { f.Close() }, nil
}

// pollExit closes done when /proc/PID is gone or a zombie, or quit closes.
func pollExit(pid int, done chan<- struct{}, quit <-chan struct{}) {
	defer close(done)
	for {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || zombie(stat) {
			return
		}
		select {
		case <-quit:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// zombie reads the state field of /proc/PID/stat ("PID (comm) S ...").
func zombie(stat []byte) bool {
	for i := len(stat) - 1; i > 0; i-- {
		if stat[i] == ')' {
			return i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X')
		}
	}
	return false
}
