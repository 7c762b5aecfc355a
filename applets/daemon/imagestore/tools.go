package imagestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"banger/internal/errdefs"
)

// Debian packages that provide the tools this package runs.
const (
	pkgE2fsprogs = "e2fsprogs"
	pkgQemuUtils = "qemu-utils"
)

// toolPackage names the Debian package that has an external tool, so a
// missing tool's error says what to install.
func toolPackage(tool string) string {
	switch tool {
	case "qemu-img":
		return pkgQemuUtils
	default: // mkfs.ext4, debugfs, e2fsck, resize2fs, dumpe2fs
		return pkgE2fsprogs
	}
}

// findTool returns the path of an external tool, or an unavailable error
// naming the Debian package to install.
func findTool(name string) (string, error) {
	if p, err := LookTool(name); err == nil {
		return p, nil
	}
	return "", errdefs.Errorf(errdefs.ErrUnavailable, "%s is not installed; install the Debian package %s", name, toolPackage(name))
}

// LookTool finds a program the daemon runs: on PATH, then in the sbin
// directories a normal user's PATH lacks (e2fsprogs installs into /sbin,
// and the daemon runs as that user).
func LookTool(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		q := filepath.Join(dir, name)
		if fi, serr := os.Stat(q); serr == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return q, nil
		}
	}
	return "", err
}

// toolRun is one run of an external tool.
type toolRun struct {
	name  string
	args  []string
	dir   string    // working directory; "" for ours
	stdin io.Reader // nil for none
}

// toolResult is what a tool printed and how it ended.
type toolResult struct {
	stdout, stderr string
	exitCode       int
}

// run starts the tool and waits for it. A non-zero exit is an error that
// carries the tool's own words, except when okCodes lists that exit code
// (e2fsck reports "errors fixed" as 1).
func run(ctx context.Context, r toolRun, okCodes ...int) (toolResult, error) {
	path, err := findTool(r.name)
	if err != nil {
		return toolResult{}, err
	}
	cmd := exec.CommandContext(ctx, path, r.args...)
	cmd.Dir = r.dir
	cmd.Stdin = r.stdin
	// Parse-stable output whatever the user's locale is.
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	res := toolResult{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		res.exitCode = exit.ExitCode()
		for _, ok := range okCodes {
			if res.exitCode == ok {
				return res, nil
			}
		}
	}
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return res, fmt.Errorf("%s: %w", r.name, ctxErr)
		}
		return res, fmt.Errorf("%s %s: %w: %s", r.name, strings.Join(r.args, " "), err, lastLines(res.stderr+res.stdout, 3))
	}
	return res, nil
}

// lastLines keeps the end of a tool's output for an error message.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}
