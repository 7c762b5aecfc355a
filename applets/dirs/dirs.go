// Package dirs names the files and directories of a user-mode banger: the
// runtime directory with the daemon's socket, and the state directory with
// its logs. Every file name is a constant here, so `ls` of a directory can
// be read against one list.
package dirs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// SystemHelperSocket is where the system install's root helper listens.
const SystemHelperSocket = "/run/banger-root/bangerd-root.sock"

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
// ~/.local/state/banger.
func State() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "banger")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		home = filepath.Join(os.TempDir(), "banger-home-"+strconv.Itoa(os.Getuid()))
	}
	return filepath.Join(home, ".local", "state", "banger")
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
