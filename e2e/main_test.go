package e2e_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// bangerBin is the binary built once for the end-to-end tests and
// benchmarks of this package, run as a user would run it.
var bangerBin string

func TestMain(m *testing.M) {
	if spec := os.Getenv(envFakeDaemon); spec != "" {
		os.Exit(fakeDaemon(spec))
	}
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// The binary and the directories made here are run and read as
	// other users too, whatever the caller's umask.
	syscall.Umask(0o022)
	// A short, world-readable directory: sockets live under it (108-byte
	// limit), and tests run the daemon as an unprivileged user too.
	dir, err := os.MkdirTemp("", "bge")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	bangerBin = filepath.Join(dir, "banger")
	build := exec.Command("go", "build", "-tags", "urfave_cli_no_docs", "-o", bangerBin, "banger")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build banger:", err)
		return 1
	}
	return m.Run()
}
