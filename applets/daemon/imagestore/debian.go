package imagestore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"banger/internal/api"
	"banger/internal/errdefs"
)

// The Debian images' defaults.
const (
	DefaultSuite  = "bookworm"
	pkgMmdebstrap = "mmdebstrap"
	// debianVariant is mmdebstrap's package set under the included
	// packages: Essential and apt, so the guest can install more.
	debianVariant = "apt"
)

// DefaultPackages are what the default image has beyond Debian's base:
// what a repository's tests commonly need.
var DefaultPackages = []string{"ca-certificates", "curl", "gcc", "git", "libc6-dev", "make", "python3"}

// DebianSpec says what a Debian image is made of.
type DebianSpec struct {
	Name        string
	Suite       string   // DefaultSuite when empty
	Packages    []string // installed on top of the variant
	Mirror      string   // a Debian mirror's URL; empty: deb.debian.org with updates and security
	Kernel      string   // the newest /boot/vmlinuz-* when empty
	AgentBinary string
	KernelArgs  string
	// Detail (may be nil) is told what the build is doing, as a line
	// for a progress display: bytes downloaded, then mmdebstrap's steps.
	Detail func(string)
	// BuildKey is recorded in the manifest (Manifest.BuildKey).
	BuildKey string
}

// debianSuite is a suite or codename: a mirror's dists/ entry.
var debianSuite = regexp.MustCompile(`^[a-z][a-z0-9-]{1,31}$`)

// debianPackage is a Debian package name (Policy 5.6.1), with an optional
// :arch, =version or /release as apt takes them.
var debianPackage = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?([=/][A-Za-z0-9.+:~-]+)?$`)

// checkDebian validates a Debian spec's fields: they go on mmdebstrap's
// command line.
func checkDebian(spec *DebianSpec) error {
	if spec.Suite == "" {
		spec.Suite = DefaultSuite
	}
	if err := CheckSuite(spec.Suite); err != nil {
		return err
	}
	if err := CheckPackages(spec.Packages); err != nil {
		return err
	}
	if spec.Mirror != "" && !strings.HasPrefix(spec.Mirror, "http://") && !strings.HasPrefix(spec.Mirror, "https://") && !strings.HasPrefix(spec.Mirror, "file:/") {
		return errdefs.Errorf(errdefs.ErrInvalid, "Debian mirror %q is not an http://, https:// or file:/ URL", spec.Mirror)
	}
	return nil
}

// CheckPackages refuses what is not a Debian package name (with an
// optional :arch, =version or /release): the names go on a command line.
func CheckPackages(pkgs []string) error {
	for _, p := range pkgs {
		if !debianPackage.MatchString(p) {
			return errdefs.Errorf(errdefs.ErrInvalid, "%q is not a Debian package name", p)
		}
	}
	return nil
}

// CheckSuite refuses what is not a Debian suite or codename.
func CheckSuite(suite string) error {
	if !debianSuite.MatchString(suite) {
		return errdefs.Errorf(errdefs.ErrInvalid, "%q is not a Debian suite (such as %s or trixie)", suite, DefaultSuite)
	}
	return nil
}

// EnsureDebian returns the image spec names, building it first if there
// is none: a Debian root of spec's suite and packages made by mmdebstrap
// from Debian's packages, its tar streamed into the image (no copy of it
// on disk), plus the agent. Callers at once build it once, as
// EnsureTiny.
func (s *Store) EnsureDebian(ctx context.Context, spec DebianSpec) (Image, error) {
	if err := checkDebian(&spec); err != nil {
		return Image{}, err
	}
	return s.ensure(ctx, spec.Name, func() (Image, error) {
		if spec.Kernel == "" {
			var err error
			if spec.Kernel, err = HostKernel(DefaultBootDir); err != nil {
				return Image{}, err
			}
		}
		if _, err := exec.LookPath(pkgMmdebstrap); err != nil {
			return Image{}, errdefs.Errorf(errdefs.ErrUnavailable, "no mmdebstrap to build the Debian image %s: install the Debian package %s, or boot the busybox image (`--image %s`)", spec.Name, pkgMmdebstrap, api.TinyImage)
		}
		b, err := checkCommon(ImportSpec{Name: spec.Name, KernelPath: spec.Kernel, AgentBinary: spec.AgentBinary, KernelArgs: spec.KernelArgs, BuildKey: spec.BuildKey})
		if err != nil {
			return Image{}, err
		}
		b.rootfs = rootfsSource{from: Origin{Kind: OriginDebian, Path: debianOrigin(spec)},
			populate: func(ctx context.Context, st *stager) error { return stageDebian(ctx, st, spec) }}
		return s.build(ctx, b)
	})
}

// debianOrigin is what a Debian root is made of, as its manifest says:
// "bookworm: ca-certificates curl ...", and the mirror when not the
// default one.
func debianOrigin(spec DebianSpec) string {
	pkgs := slices.Clone(spec.Packages)
	slices.Sort(pkgs)
	o := spec.Suite + ": " + strings.Join(pkgs, " ")
	if spec.Mirror != "" {
		o += " from " + spec.Mirror
	}
	return o
}

// Origin is the origin an image of spec records, for a caller to tell
// whether an image is still what spec makes.
func (spec DebianSpec) Origin() Origin {
	if checkDebian(&spec) != nil {
		return Origin{}
	}
	return Origin{Kind: OriginDebian, Path: debianOrigin(spec)}
}

// mmdebstrapArgs is mmdebstrap's command line for spec, writing the root
// as a tar on its standard output.
func mmdebstrapArgs(spec DebianSpec) []string {
	args := []string{"--variant=" + debianVariant, "--format=tar", "--mode=auto"}
	if len(spec.Packages) > 0 {
		args = append(args, "--include="+strings.Join(spec.Packages, ","))
	}
	args = append(args, spec.Suite, "-")
	if spec.Mirror != "" {
		return append(args, spec.Mirror)
	}
	// mmdebstrap's default mirror has no security updates and no
	// stable-updates: a guest's apt would install outdated packages.
	const main = "http://deb.debian.org/debian"
	return append(args, fmt.Sprintf("deb %s %s main", main, spec.Suite),
		fmt.Sprintf("deb %s %s-updates main", main, spec.Suite),
		fmt.Sprintf("deb http://deb.debian.org/debian-security %s-security main", spec.Suite))
}

// stageDebian runs mmdebstrap for spec and unpacks its tar, as it
// comes, into the staging tree. Its working tree goes in a directory
// beside the stage (the store's disk, not a tmpfs /tmp).
func stageDebian(ctx context.Context, st *stager, spec DebianSpec) error {
	work, err := os.MkdirTemp(filepath.Dir(st.dir), "mmdebstrap-")
	if err != nil {
		return err
	}
	defer removeUnmounted(work)
	cmd := exec.CommandContext(ctx, pkgMmdebstrap, mmdebstrapArgs(spec)...)
	cmd.Env = append(os.Environ(), "TMPDIR="+work, "LC_ALL=C.UTF-8")
	// A cancel asks mmdebstrap to stop, so that it unmounts what it
	// mounted in its tree (as root it mounts /proc, /sys and /dev there)
	// and removes it; only if it does not is it killed.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	// And so does the daemon's end, even a kill -9 of it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	cmd.WaitDelay = 30 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run mmdebstrap: %w", err)
	}
	log := newMmdebstrapLog(spec.Detail)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); log.read(ctx, stderr) }()
	unpackErr := stageTar(ctx, st, stdout, "mmdebstrap's tar of Debian "+spec.Suite)
	if unpackErr != nil {
		io.Copy(io.Discard, stdout) // let mmdebstrap end rather than block on a full pipe
	}
	wg.Wait()
	runErr := cmd.Wait()
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case runErr != nil:
		return log.failure(spec, runErr)
	case unpackErr == nil:
		log.detail("making the root filesystem")
	}
	return unpackErr
}

// removeUnmounted removes the tree dir unless something is mounted in
// it (a killed mmdebstrap's /proc or /dev): removing that would reach
// through the mount into the host's own files. It is left then, for the
// store's next start.
func removeUnmounted(dir string) error {
	if mounts, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(mounts), "\n") {
			if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
				return nil
			}
		}
	}
	return os.RemoveAll(dir)
}

// mmdebstrapLog reads mmdebstrap's standard error: its "I: " lines are
// the build's steps, told to detail; while apt downloads, the bytes of
// the packages in mmdebstrap's tree are; the last lines are kept for the
// error of a failed build.
type mmdebstrapLog struct {
	detail func(string)
	mu     sync.Mutex
	tail   []string
	step   int // counts the steps, so a download's count never follows its step
}

func newMmdebstrapLog(detail func(string)) *mmdebstrapLog {
	if detail == nil {
		detail = func(string) {}
	}
	return &mmdebstrapLog{detail: detail}
}

// tailLines is how many of mmdebstrap's last lines a failure quotes.
const tailLines = 6

func (l *mmdebstrapLog) read(ctx context.Context, r io.Reader) {
	var downloading chan struct{} // closed when the download step ends
	stopDownload := func() {
		if downloading != nil {
			close(downloading)
			downloading = nil
		}
	}
	defer stopDownload()
	tree := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		l.mu.Lock()
		l.tail = append(l.tail, line)
		if len(l.tail) > tailLines {
			l.tail = l.tail[1:]
		}
		l.mu.Unlock()
		step, ok := strings.CutPrefix(line, "I: ")
		if !ok {
			continue
		}
		if dir, ok := strings.CutPrefix(step, "using "); ok {
			tree = strings.TrimSuffix(dir, " as tempdir")
		}
		// The steps are the lines that end in "..." ("downloading
		// packages with apt..."), but for the removal of its tree.
		if !strings.HasSuffix(step, "...") || strings.HasPrefix(step, "removing tempdir") {
			continue
		}
		stopDownload()
		step = strings.TrimSuffix(step, "...")
		l.mu.Lock()
		l.step++
		n := l.step
		l.detail(step)
		l.mu.Unlock()
		if strings.HasPrefix(step, "downloading packages") && tree != "" {
			downloading = make(chan struct{})
			go l.countDownload(ctx, downloading, n, step, filepath.Join(tree, "var/cache/apt/archives"))
		}
	}
}

// countDownload tells detail the bytes of the packages under dir until
// stop is closed or ctx ends.
func (l *mmdebstrapLog) countDownload(ctx context.Context, stop <-chan struct{}, n int, step, dir string) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-stop:
			return
		case <-t.C:
		}
		var size int64
		filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil {
					size += fi.Size()
				}
			}
			return nil
		})
		l.mu.Lock()
		if l.step == n && size > 0 {
			l.detail(step + ": " + api.HumanBytes(size))
		}
		l.mu.Unlock()
	}
}

// failure is the error of a build mmdebstrap failed, with its last lines
// and what to do instead: a mirror that cannot be reached is the common
// cause, so it names the busybox image and an import.
func (l *mmdebstrapLog) failure(spec DebianSpec, err error) error {
	l.mu.Lock()
	tail := strings.Join(l.tail, "; ")
	l.mu.Unlock()
	mirror := spec.Mirror
	if mirror == "" {
		mirror = "deb.debian.org"
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		err = fmt.Errorf("mmdebstrap exited with %d", exit.ExitCode())
	}
	return errdefs.Errorf(errdefs.ErrUnavailable,
		"cannot build the Debian %s image %s from %s (%v: %s); boot the busybox image instead (`--image %s`), or import one (`banger image import NAME --oci docker://debian:%s`)",
		spec.Suite, spec.Name, mirror, err, tail, api.TinyImage, spec.Suite)
}
