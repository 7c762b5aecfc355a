package imagestore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"banger/applets/agent/boot"
	"banger/internal/api"
	"banger/internal/errdefs"
)

// The busybox image's defaults, and the Debian packages it is made from.
const (
	DefaultBusybox = "/bin/busybox"
	DefaultBootDir = "/boot"

	pkgBusybox = "busybox-static"
	pkgKernel  = "linux-image-amd64"
)

// TinySpec says what the busybox image is assembled from; zero fields
// take the host's.
type TinySpec struct {
	Name        string // api.TinyImage
	Kernel      string // the newest /boot/vmlinuz-*
	Busybox     string // DefaultBusybox; must be statically linked
	AgentBinary string // the banger binary
	KernelArgs  string
	SizeMiB     int // 0: computed
}

// EnsureTiny returns the busybox image, assembling it first if there is
// none: the host's kernel, and a root filesystem of busybox (one symlink
// per applet), a few files in /etc, and the agent — nothing downloaded.
func (s *Store) EnsureTiny(ctx context.Context, spec TinySpec) (Image, error) {
	if spec.Name == "" {
		spec.Name = api.TinyImage
	}
	if spec.Busybox == "" {
		spec.Busybox = DefaultBusybox
	}
	return s.ensure(ctx, spec.Name, func() (Image, error) {
		var err error
		if spec.Kernel == "" {
			if spec.Kernel, err = HostKernel(DefaultBootDir); err != nil {
				return Image{}, err
			}
		}
		if err := checkBusybox(spec.Busybox); err != nil {
			return Image{}, err
		}
		applets, err := busyboxApplets(ctx, spec.Busybox)
		if err != nil {
			return Image{}, err
		}
		b, err := checkCommon(ImportSpec{Name: spec.Name, KernelPath: spec.Kernel, AgentBinary: spec.AgentBinary,
			KernelArgs: spec.KernelArgs, SizeMiB: spec.SizeMiB})
		if err != nil {
			return Image{}, err
		}
		busybox := spec.Busybox
		b.rootfs = rootfsSource{from: Origin{Kind: OriginBusybox, Path: absPath(busybox)},
			populate: func(ctx context.Context, st *stager) error { return stageBusybox(ctx, st, busybox, applets) }}
		return s.build(ctx, b)
	})
}

// ensure returns the image called name, made by make first if there is
// none. Callers at once, in one process or several, make it once: the
// others wait for that build and get its image.
func (s *Store) ensure(ctx context.Context, name string, make func() (Image, error)) (Image, error) {
	if im, err := s.Get(ctx, name); !errors.Is(err, errdefs.ErrNotFound) {
		return im, err // there, broken, or a bad name
	}
	l, err := waitLock(ctx, s.path(locksDir, name), unix.LOCK_EX)
	if err != nil {
		return Image{}, fmt.Errorf("assemble image %s: %w", name, err)
	}
	defer l.unlock()
	if im, err := s.Get(ctx, name); !errors.Is(err, errdefs.ErrNotFound) {
		return im, err // built while we waited
	}
	return make()
}

// HostKernel returns the newest kernel in bootDir (vmlinuz-*, by version),
// or an unavailable error naming the package that installs one.
func HostKernel(bootDir string) (string, error) {
	files, _ := filepath.Glob(filepath.Join(bootDir, "vmlinuz-*"))
	if len(files) == 0 {
		return "", errdefs.Errorf(errdefs.ErrUnavailable, "no kernel in %s (vmlinuz-*); install the Debian package %s", bootDir, pkgKernel)
	}
	sort.Slice(files, func(i, j int) bool { return versionLess(files[i], files[j]) })
	return files[len(files)-1], nil
}

// versionLess orders strings as versions: runs of digits compare as
// numbers, so 6.1.0-10 comes after 6.1.0-9.
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		ca, ra := versionChunk(a)
		cb, rb := versionChunk(b)
		if ca != cb {
			da, db := isDigit(ca[0]), isDigit(cb[0])
			switch {
			case da && db:
				na, nb := strings.TrimLeft(ca, "0"), strings.TrimLeft(cb, "0")
				if len(na) != len(nb) {
					return len(na) < len(nb)
				}
				return na < nb
			default:
				return ca < cb
			}
		}
		a, b = ra, rb
	}
	return len(a) < len(b)
}

// versionChunk splits off the leading run of digits or of non-digits.
func versionChunk(s string) (string, string) {
	d := isDigit(s[0])
	i := 1
	for i < len(s) && isDigit(s[i]) == d {
		i++
	}
	return s[:i], s[i:]
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// checkBusybox checks that path is a statically linked busybox: a
// dynamically linked one (Debian's "busybox") would not run in a root
// filesystem that has no libc.
func checkBusybox(path string) error {
	if _, err := os.Stat(path); err != nil {
		return errdefs.Errorf(errdefs.ErrUnavailable, "no busybox at %s (%v); install the Debian package %s", path, errors.Unwrap(err), pkgBusybox)
	}
	static, err := isStatic(path)
	if err != nil {
		return errdefs.Errorf(errdefs.ErrUnavailable, "%s is not an executable busybox (%v); install the Debian package %s", path, err, pkgBusybox)
	}
	if !static {
		return errdefs.Errorf(errdefs.ErrUnavailable, "%s is dynamically linked (the Debian package busybox); install %s, which replaces it", path, pkgBusybox)
	}
	return nil
}

// busyboxApplets asks busybox where its applets go ("bin/ls",
// "usr/bin/env", ...), or, from a busybox that cannot say, which there are
// (all then go in bin).
func busyboxApplets(ctx context.Context, busybox string) ([]string, error) {
	list := func(arg string) ([]string, error) {
		out, err := exec.CommandContext(ctx, busybox, arg).Output()
		if err != nil {
			return nil, err
		}
		var names []string
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			if n := strings.TrimSpace(sc.Text()); n != "" {
				names = append(names, n)
			}
		}
		return names, nil
	}
	full, err := list("--list-full")
	if err == nil && len(full) > 0 {
		return full, nil
	}
	names, err := list("--list")
	if err != nil {
		return nil, errdefs.Errorf(errdefs.ErrUnavailable, "%s does not list its applets (%v); install the Debian package %s", busybox, err, pkgBusybox)
	}
	for i, n := range names {
		names[i] = "bin/" + n
	}
	return names, nil
}

// stageBusybox writes the busybox image's tree: busybox and its applet
// links, and the few files in /etc that programs expect.
func stageBusybox(ctx context.Context, st *stager, busybox string, applets []string) error {
	for _, d := range []struct {
		name string
		perm uint32
	}{{"bin", 0o755}, {"sbin", 0o755}, {"usr", 0o755}, {"usr/bin", 0o755}, {"usr/sbin", 0o755},
		{"etc", 0o755}, {"var", 0o755}, {"var/tmp", 0o1777}} {
		if err := st.mkdir(d.name, rootAttr(d.perm)); err != nil {
			return err
		}
	}
	f, err := os.Open(busybox)
	if err != nil {
		return fmt.Errorf("read busybox: %w", err)
	}
	defer f.Close()
	if err := st.create(ctx, "bin/busybox", rootAttr(0o755), f, time.Time{}); err != nil {
		return err
	}
	agent := strings.TrimPrefix(boot.AgentPath, "/")
	links := map[string]bool{}
	for _, a := range append(applets, "bin/sh") {
		a = strings.TrimPrefix(a, "/")
		if !fs.ValidPath(a) || a == "bin/busybox" || a == agent || links[a] {
			continue
		}
		links[a] = true
		if err := st.symlink(a, "/bin/busybox", rootAttr(0o777)); err != nil {
			return err
		}
	}
	for _, file := range defaultEtc() {
		if err := st.create(ctx, file.name, rootAttr(file.perm), strings.NewReader(file.data), time.Time{}); err != nil {
			return err
		}
	}
	return nil
}

// defaultEtc is the busybox image's /etc.
func defaultEtc() []struct {
	name, data string
	perm       uint32
} {
	return []struct {
		name, data string
		perm       uint32
	}{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", 0o644},
		{"etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644},
		{"etc/hostname", "banger\n", 0o644},
		{"etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644},
		{"etc/os-release", "NAME=\"banger-tiny\"\nID=banger-tiny\nPRETTY_NAME=\"banger tiny image (busybox)\"\nVERSION_ID=\"1\"\n", 0o644},
	}
}
