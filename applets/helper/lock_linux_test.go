package helper

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/layout"
	"banger/rpc"
)

// The helpers of a host agree on the lock through the system helper's
// runtime directory, which the service's unit makes root's and 0711.
func TestDefaultLockFileIsInTheHelpersRuntimeDir(t *testing.T) {
	if filepath.Dir(DefaultLockFile) != filepath.Dir(layout.SystemHelperSocket) {
		t.Errorf("lock %s is not beside the helper's socket %s", DefaultLockFile, layout.SystemHelperSocket)
	}
}

// Two hostLocks on one path are two open files, as two helper processes
// have: flock orders them as it orders processes.
func TestHostLockWaitsForTheHolder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "helper.lock")
	a, b := &hostLock{path: path}, &hostLock{path: path}
	releaseA, err := a.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if pid, _ := os.ReadFile(path); strings.TrimSpace(string(pid)) != itoa(os.Getpid()) {
		t.Errorf("lock file says %q, want our pid", pid)
	}
	got := make(chan error, 1)
	go func() {
		release, err := b.acquire(context.Background())
		if err == nil {
			release()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("the second lock did not wait for the first: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	releaseA()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the second lock was not taken after the first was released")
	}

	// A waiter gives up when its call is canceled, and after its timeout
	// with a timeout error that names the holder.
	releaseA, err = a.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer releaseA()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	if _, err := b.acquire(ctx); rpc.CodeOf(err) != rpc.CodeCanceled {
		t.Errorf("canceled wait: %v (%s)", err, rpc.CodeOf(err))
	}
	b.timeout = 100 * time.Millisecond
	_, err = b.acquire(context.Background())
	if rpc.CodeOf(err) != rpc.CodeTimeout || !strings.Contains(err.Error(), "pid "+itoa(os.Getpid())) {
		t.Errorf("wait past the timeout: %v (%s)", err, rpc.CodeOf(err))
	}
	// The waiter let go of its own mutex: it can wait again.
	b.timeout = 50 * time.Millisecond
	if _, err := b.acquire(context.Background()); rpc.CodeOf(err) != rpc.CodeTimeout {
		t.Errorf("second wait: %v", err)
	}
}

// The kernel drops a dead holder's lock: a crashed helper blocks nobody.
func TestHostLockOfAClosedHolderIsFree(t *testing.T) {
	path := filepath.Join(t.TempDir(), "helper.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	f.Close()
	l := &hostLock{path: path, timeout: time.Second}
	release, err := l.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	release()
}

// Without a path, the lock orders this process's calls only.
func TestHostLockWithoutAFile(t *testing.T) {
	l := &hostLock{}
	release, err := l.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	release()
	release, err = l.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	release()
}

// The lock's directory must be ours alone, and neither it nor the file a
// symlink: root opens the file, so whoever can swap it could aim root's
// open elsewhere.
func TestHostLockRefusesForeignPlaces(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o777) // past the umask
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("keep\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(real, "swapped.lock")); err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		filepath.Join(dir, "link", "helper.lock"): "not a directory",
		filepath.Join(open, "helper.lock"):        "others may write",
		filepath.Join(real, "swapped.lock"):       "symbolic link",
	}
	if os.Geteuid() == 0 {
		theirs := filepath.Join(dir, "theirs")
		if err := os.Mkdir(theirs, 0o711); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(theirs, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		cases[filepath.Join(theirs, "helper.lock")] = "belongs to uid 65534"
	}
	for path, want := range cases {
		_, err := (&hostLock{path: path}).acquire(context.Background())
		if rpc.CodeOf(err) != rpc.CodeUnavailable || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want unavailable with %q", path, err, want)
		}
	}
	if b, _ := os.ReadFile(target); string(b) != "keep\n" {
		t.Errorf("the symlink's target was written: %q", b)
	}
	// A missing directory is made, root's (ours) and 0711 whatever the
	// umask.
	old := unix.Umask(0o077)
	defer unix.Umask(old)
	fresh := filepath.Join(dir, "fresh", "helper.lock")
	release, err := (&hostLock{path: fresh}).acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	release()
	if fi, err := os.Stat(filepath.Dir(fresh)); err != nil || fi.Mode().Perm() != 0o711 {
		t.Errorf("made directory: %v %v", fi.Mode(), err)
	}
	if fi, err := os.Stat(fresh); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file: %v %v", fi, err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
