package imagestore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// errLocked is returned by tryLock when someone else holds the lock.
var errLocked = errors.New("locked by another process")

// lockPoll is how often a waiting lock tries again. flock(2) cannot be
// interrupted by a context, so a waiter polls instead of blocking.
const lockPoll = 25 * time.Millisecond

// flock is a held flock(2) lock on an open file. Locks belong to the open
// file, so two opens in one process exclude each other like two processes
// do, and the kernel drops the lock when a killed holder's file closes.
type flock struct{ f *os.File }

// tryLock takes the lock on path (creating the file) without waiting;
// how is unix.LOCK_SH or unix.LOCK_EX. It returns errLocked when the lock
// is held elsewhere.
func tryLock(path string, how int) (*flock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	if err == nil {
		return &flock{f: f}, nil
	}
	f.Close()
	if err == unix.EWOULDBLOCK {
		return nil, errLocked
	}
	return nil, fmt.Errorf("lock %s: %w", path, err)
}

// waitLock takes the lock on path, waiting until it is free or ctx ends.
func waitLock(ctx context.Context, path string, how int) (*flock, error) {
	t := time.NewTicker(lockPoll)
	defer t.Stop()
	for {
		l, err := tryLock(path, how)
		if !errors.Is(err, errLocked) {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for lock %s: %w", path, ctx.Err())
		case <-t.C:
		}
	}
}

// unlock releases the lock by closing its file.
func (l *flock) unlock() {
	if l != nil {
		l.f.Close()
	}
}
