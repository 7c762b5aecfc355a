package engine

import (
	"fmt"
	"os"
	"path/filepath"

	"banger/internal/layout"
)

// Files of an instance directory: layout names them all.

// runtimeFiles are what a running QEMU owns; they are removed when it is
// gone. The disk, the argv and the logs stay for inspection.
func runtimeFiles() []string {
	return []string{layout.PID, layout.QMPSocket, layout.AgentSocket, layout.NetSocket}
}

// CheckDir refuses an instance directory whose sockets' paths would not
// fit a Unix socket address (108 bytes with the NUL on Linux).
func CheckDir(dir string) error { return layout.CheckInstanceDir(dir) }

// CleanRuntime removes the files a QEMU that is no longer running left
// in dir: its pidfile and sockets. Call it only once the process is gone.
func CleanRuntime(dir string) error {
	for _, f := range runtimeFiles() {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("clean %s: %w", dir, err)
		}
	}
	return nil
}
