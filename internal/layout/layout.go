// Package layout names every file and directory banger makes: the
// runtime directory with the daemon's sockets, the state directory with
// its database, logs and stores, and in them each instance, image,
// snapshot and kernel directory (names.go). Every name is a constant
// here, so `ls` of any of them can be read against one list, as Lima's
// store/filenames is; this file also finds the directories and checks
// who owns them.
package layout

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// File names inside the runtime and state directories.
const (
	DaemonSocket = "bangerd.sock"     // runtime dir
	DaemonLog    = "bangerd.log"      // state dir
	HelperLog    = "bangerd-root.log" // state dir; the sudo helper's records
	LockSuffix   = ".lock"            // beside a socket; flock held by its server
)

// MaxSocketPath is the longest path a Unix socket can have on Linux
// (sun_path is 108 bytes including the terminating NUL).
const MaxSocketPath = 107

// Runtime returns the user's runtime directory for banger:
// $XDG_RUNTIME_DIR/banger, or /tmp/banger-UID when XDG_RUNTIME_DIR is unset
// (as for a cron job or an ssh session without a login manager).
func Runtime() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "banger")
	}
	return filepath.Join(os.TempDir(), "banger-"+strconv.Itoa(os.Getuid()))
}

// State returns banger's state directory: $XDG_STATE_HOME/banger, else
// ~/.local/state/banger ($HOME, else the user's home in the password
// database), else one under the temporary directory (fallbackHome).
func State() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "banger")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		home = fallbackHome()
		if u, err := user.LookupId(strconv.Itoa(os.Getuid())); err == nil && u.HomeDir != "" && u.HomeDir != "/" && u.HomeDir != "/nonexistent" {
			home = u.HomeDir
		}
	}
	return filepath.Join(home, ".local", "state", "banger")
}

// fallbackHome stands in for the home of a user who has none: a
// directory of the user's own in the shared temporary directory.
func fallbackHome() string {
	return filepath.Join(os.TempDir(), "banger-home-"+strconv.Itoa(os.Getuid()))
}

// EnsureState makes the state directory dir private, as EnsurePrivate
// does. Under fallbackHome every directory from it down is checked so:
// in a shared temporary directory another user could have made any of
// them first, and whoever owns a directory can swap what is inside.
func EnsureState(dir string) error {
	root := fallbackHome()
	rel, err := filepath.Rel(root, dir)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return EnsurePrivate(dir)
	}
	path := root
	if err := EnsurePrivate(path); err != nil {
		return err
	}
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		if part == "." {
			continue
		}
		path = filepath.Join(path, part)
		if err := EnsurePrivate(path); err != nil {
			return err
		}
	}
	return nil
}

// DefaultSocket is the user-mode daemon's socket path.
func DefaultSocket() string {
	return filepath.Join(Runtime(), DaemonSocket)
}

// StreamSocket is the path of the daemon's stream socket, beside its
// rpc socket: exec and copy sessions, which go on after the response
// (PROTOCOL.md's socket carries one request and one response only).
func StreamSocket(daemonSocket string) string {
	return strings.TrimSuffix(daemonSocket, ".sock") + "-stream.sock"
}

// EnsurePrivate creates dir (and its parents) if needed and makes sure it
// is a real directory, owned by us, mode 0700. It refuses a symlink or a
// directory someone else owns: in a shared /tmp another user could have
// made it first to watch or hijack our socket.
func EnsurePrivate(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(dir), err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("%s is a symlink; refusing to use it (remove it)", dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: cannot read its owner", dir)
	}
	if int(st.Uid) != os.Getuid() {
		return fmt.Errorf("%s is owned by uid %d, not by us (uid %d); refusing to use it", dir, st.Uid, os.Getuid())
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("make %s private: %w", dir, err)
		}
	}
	return nil
}

// CheckSocketPath refuses a socket path the kernel cannot bind.
func CheckSocketPath(path string) error {
	if len(path) > MaxSocketPath {
		return fmt.Errorf("socket path %s is %d bytes; Linux allows at most %d (use a shorter XDG_RUNTIME_DIR or --socket)", path, len(path), MaxSocketPath)
	}
	return nil
}

// CheckDialable checks a socket a client is about to dial, as the daemon
// checks the directory it serves from: the directory, when it exists, is
// a real one (no symlink), owned by one of owners and writable by its
// owner alone; the socket, when it exists, is a socket (no symlink)
// owned by one of owners. In a shared /tmp another user could otherwise
// have made the directory first, and answer as the daemon. Nothing there
// yet is no error: the dial then finds no daemon.
func CheckDialable(socket string, owners ...int) error {
	check := func(path string, want os.FileMode, what string) error {
		fi, err := os.Lstat(path)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			return fmt.Errorf("%s is a symlink", path)
		case fi.Mode().Type() != want:
			return fmt.Errorf("%s is not a %s", path, what)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: cannot read its owner", path)
		}
		if !slices.Contains(owners, int(st.Uid)) {
			return fmt.Errorf("%s is owned by uid %d, not by you (uid %d) or root", path, st.Uid, os.Getuid())
		}
		if want == os.ModeDir && fi.Mode().Perm()&0o022 != 0 {
			return fmt.Errorf("%s is writable by others (mode %04o)", path, fi.Mode().Perm())
		}
		return nil
	}
	if err := check(filepath.Dir(socket), os.ModeDir, "directory"); err != nil {
		return err
	}
	return check(socket, os.ModeSocket, "socket")
}
