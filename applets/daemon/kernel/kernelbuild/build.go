package kernelbuild

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"banger/applets/daemon/kernel"
	"banger/internal/errdefs"
)

// SourceGlob finds Debian's kernel source tarballs (linux-source-6.1
// installs /usr/src/linux-source-6.1.tar.xz).
const SourceGlob = "/usr/src/linux-source-*.tar.xz"

// Packages are the Debian packages a build needs, for error messages and
// docs/images-and-kernels.md.
const Packages = "linux-source-6.1 build-essential flex bison bc libelf-dev"

// EstimatedObjects is how many objects a build of banger's fragment on
// linux-source-6.1 compiles (measured), the progress estimate of a first
// build; later builds use the previous build's count.
const EstimatedObjects = 1486

// killWait bounds how long a canceled tool's output may keep its pipes
// open after its process group is killed.
const killWait = 5 * time.Second

// FindSource returns the newest kernel source tarball matching glob, or an
// unavailable error naming the packages to install.
func FindSource(glob string) (string, error) {
	files, _ := filepath.Glob(glob)
	if len(files) == 0 {
		return "", errdefs.Errorf(errdefs.ErrUnavailable, "no kernel source (%s); install the Debian packages %s", glob, Packages)
	}
	sort.Strings(files)
	return files[len(files)-1], nil
}

// CheckTools reports the build tools that are missing, as an unavailable
// error naming the packages to install.
func CheckTools() error {
	var missing []string
	for _, t := range []string{"tar", "xz", "make", "gcc", "ld", "flex", "bison", "bc", "perl"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	// objtool, built during the compile, needs libelf's headers.
	if _, err := os.Stat("/usr/include/gelf.h"); err != nil {
		missing = append(missing, "libelf headers")
	}
	if len(missing) > 0 {
		return errdefs.Errorf(errdefs.ErrUnavailable, "kernel build tools missing (%s); install the Debian packages %s", strings.Join(missing, ", "), Packages)
	}
	return nil
}

// Build is one kernel build in Dir, from the source tarball Source.
type Build struct {
	Source   string
	Dir      string
	Fragment []byte // kernel.MicroVMFragment() when nil
	Jobs     int    // make -j; 1 when 0
	// Log receives the tools' output (nil: discarded); the last lines
	// also go into a failed step's error.
	Log io.Writer
}

// Unpack extracts the source tarball into Dir.
func (b *Build) Unpack(ctx context.Context) error {
	if err := os.MkdirAll(b.Dir, 0o755); err != nil {
		return fmt.Errorf("unpack kernel source: %w", err)
	}
	return b.run(ctx, nil, "tar", "-xf", b.Source, "-C", b.Dir, "--strip-components=1", "--no-same-owner")
}

// Configure makes tinyconfig, merges the fragment over it, and checks that
// every option of the fragment holds in the result (kconfig drops an
// option whose dependencies are unmet without a word).
func (b *Build) Configure(ctx context.Context) error {
	frag := b.Fragment
	if frag == nil {
		frag = kernel.MicroVMFragment()
	}
	if err := os.WriteFile(filepath.Join(b.Dir, "banger.config"), frag, 0o644); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	if err := b.make(ctx, nil, "tinyconfig"); err != nil {
		return err
	}
	if err := b.run(ctx, nil, "scripts/kconfig/merge_config.sh", "-m", ".config", "banger.config"); err != nil {
		return err
	}
	if err := b.make(ctx, nil, "olddefconfig"); err != nil {
		return err
	}
	config, err := os.ReadFile(filepath.Join(b.Dir, ".config"))
	if err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	missing, err := kernel.MissingOptions(config, frag)
	if err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	if len(missing) > 0 {
		return fmt.Errorf("configure: the fragment's options did not all hold (unmet dependencies?): %s", strings.Join(missing, ", "))
	}
	return nil
}

// Compile builds vmlinux, calling progress (which may be nil) with the
// number of objects compiled so far. It returns that number.
func (b *Build) Compile(ctx context.Context, progress func(objects int)) (int, error) {
	objects := 0
	count := func(line string) {
		// kbuild's short output: "  CC      kernel/fork.o".
		if strings.HasPrefix(line, "  CC ") || strings.HasPrefix(line, "  AS ") {
			objects++
			if progress != nil {
				progress(objects)
			}
		}
	}
	jobs := max(b.Jobs, 1)
	err := b.make(ctx, count, fmt.Sprintf("-j%d", jobs), "vmlinux")
	return objects, err
}

// Release reads the built kernel's release ("6.1.158").
func (b *Build) Release() string {
	data, err := os.ReadFile(filepath.Join(b.Dir, "include/config/kernel.release"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

func (b *Build) make(ctx context.Context, line func(string), args ...string) error {
	return b.run(ctx, line, "make", args...)
}

// run runs a tool in Dir, in its own process group, which a cancel of ctx
// kills whole (make's compilers included). Each output line goes to line
// (when not nil) and to Log; a failure's error ends with the last lines.
func (b *Build) run(ctx context.Context, line func(string), name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = b.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "KBUILD_BUILD_USER=banger", "KBUILD_BUILD_HOST=banger")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = killWait
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	tail := &lastLines{max: 15}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			text := sc.Text()
			tail.add(text)
			if b.Log != nil {
				fmt.Fprintln(b.Log, text)
			}
			if line != nil {
				line(text)
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Run()
	pw.Close()
	wg.Wait()
	if ctx.Err() != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), ctx.Err())
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("%s %s: %w; last output:\n%s", name, strings.Join(args, " "), err, tail)
		}
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

// lastLines keeps the last max lines written to it.
type lastLines struct {
	max   int
	lines []string
}

func (l *lastLines) add(s string) {
	l.lines = append(l.lines, s)
	if len(l.lines) > l.max {
		l.lines = l.lines[1:]
	}
}

func (l *lastLines) String() string { return strings.Join(l.lines, "\n") }
