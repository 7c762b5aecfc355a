package helper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"banger/logging"
	"banger/rpc"
)

// DefaultLockFile is the file whose flock every helper process of this
// host takes around a network change: the service and each sudo-mode
// helper (a process per call, so the in-process mutex cannot order them).
// Each change reads the host, decides, then acts; two at once could both
// decide to create a bridge or both rewrite the nftables table.
//
// It is root's, in root's directory: the system helper's runtime directory
// (beside dirs.SystemHelperSocket: the unit's RuntimeDirectory, 0711),
// which a sudo-mode helper makes when no service did. The daemon never
// touches it: a lock the owner could open would let a compromised daemon
// hold every helper still, and a path the owner could write would let it
// point root's open at another file.
const DefaultLockFile = "/run/banger-root/helper.lock"

// lockTimeout bounds the wait for another helper's change. Changes take
// milliseconds; a helper that holds the lock this long is stuck.
const lockTimeout = 30 * time.Second

// lockSlow is a wait worth a warning: changes take milliseconds.
const lockSlow = time.Second

// lockPoll is how often a waiting helper tries the lock again: flock
// cannot be interrupted by a context, so the wait polls.
const lockPoll = 20 * time.Millisecond

// hostLock orders the network changes of every helper on the host. With
// no path it orders this process's calls only.
type hostLock struct {
	path    string
	timeout time.Duration // zero: lockTimeout
	// mu orders this process's own calls first, so they queue on it
	// rather than poll the file.
	mu sync.Mutex
}

// acquire takes the lock, waiting at most lockTimeout or until ctx ends,
// and returns its release.
func (l *hostLock) acquire(ctx context.Context) (release func(), err error) {
	l.mu.Lock()
	if l.path == "" {
		return l.mu.Unlock, nil
	}
	f, err := openLock(l.path)
	if err != nil {
		l.mu.Unlock()
		return nil, rpc.Errorf(rpc.CodeUnavailable, "the helper's lock: %v", err)
	}
	release = func() {
		f.Close() // drops the flock
		l.mu.Unlock()
	}
	start := time.Now()
	timeout := l.timeout
	if timeout <= 0 {
		timeout = lockTimeout
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(lockPoll)
	defer tick.Stop()
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			release()
			return nil, rpc.Errorf(rpc.CodeOperationFailed, "lock %s: %v", l.path, err)
		}
		select {
		case <-ctx.Done():
			release()
			return nil, fmt.Errorf("wait for the helper's lock %s: %w", l.path, ctx.Err())
		case <-deadline.C:
			holder := lockHolder(l.path)
			release()
			return nil, rpc.Errorf(rpc.CodeTimeout, "another helper call (%s) has held %s for over %s; is a bangerd-root stuck?", holder, l.path, timeout)
		case <-tick.C:
		}
	}
	// A short wait is ordinary (a debug record: each call's records are
	// its one "helper rpc completed"); a long one means a slow holder.
	if waited := time.Since(start); waited >= lockPoll {
		e := logging.From(ctx).Debug()
		if waited >= lockSlow {
			e = logging.From(ctx).Warn()
		}
		e.Str("lock", l.path).Float64("waited_ms", logging.Millis(waited)).Msg("waited for another helper call")
	}
	// Who holds it, for a waiter's timeout message.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return release, nil
}

// lockHolder says which process wrote itself into the lock file last.
func lockHolder(path string) string {
	b, err := os.ReadFile(path)
	if pid := strings.TrimSpace(string(b)); err == nil && pid != "" {
		return "pid " + pid
	}
	return "pid unknown"
}

// openLock opens (creating) the lock file in a directory of our own that
// nobody else may write to, without following a symlink at either step.
func openLock(path string) (*os.File, error) {
	dir := filepath.Dir(path)
	switch err := os.Mkdir(dir, 0o711); {
	case err == nil:
		// As the service's RuntimeDirectoryMode, whatever the umask
		// (sudo passes on the daemon's 0077).
		if err := os.Chmod(dir, 0o711); err != nil {
			return nil, err
		}
	case !errors.Is(err, os.ErrExist):
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	if err := checkLockDir(dir); err != nil {
		return nil, err
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Sys().(*syscall.Stat_t).Uid != uint32(os.Geteuid()) {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file of uid %d", path, os.Geteuid())
	}
	return f, nil
}

// checkLockDir refuses a lock directory that is a symlink, is not ours,
// or that others may write to (they could swap the lock file).
func checkLockDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory (a symlink?)", dir)
	case st.Uid != uint32(os.Geteuid()):
		return fmt.Errorf("%s belongs to uid %d, not %d", dir, st.Uid, os.Geteuid())
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%s has mode %04o: others may write to it", dir, fi.Mode().Perm())
	}
	return nil
}
