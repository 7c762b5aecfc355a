package packaging

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"banger/internal/layout"
	"github.com/BurntSushi/toml"
)

// System is banger's system install on the file system under Root: "/"
// for the machine's own, any other directory to stage or test one (as
// DESTDIR does; systemd is then never asked to do anything).
type System struct {
	Root    string
	Applets []string // the applet links to make beside the binary
}

// Path is p (absolute, from the install's root) on this machine.
func (s System) Path(p string) string { return filepath.Join(s.Root, p) }

// SystemdRunning reports whether systemctl can start units: the install is
// the machine's own and systemd is PID 1.
func (s System) SystemdRunning() bool {
	if filepath.Clean(s.Root) != "/" {
		return false
	}
	fi, err := os.Stat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// InstallReport says what Install did.
type InstallReport struct {
	Config   Config   `json:"config"`
	Binary   string   `json:"binary"`
	Packaged bool     `json:"packaged"` // the binary belongs to the .deb and was left as it is
	Files    []string `json:"files"`    // written, by path from the root
	Removed  []string `json:"removed,omitempty"`
	Started  bool     `json:"started"` // units enabled and started
	Note     string   `json:"note,omitempty"`
}

// Install installs banger for c.Owner: self (this binary, opened through
// /proc/self/exe) copied to the prefix, its applet links, install.toml,
// the state directory, the units and in sudo mode the sudoers rule; then,
// when systemd runs, the units enabled and started. Running it again
// brings an install up to date, also from one helper mode to the other.
func (s System) Install(ctx context.Context, c Config, self string) (*InstallReport, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if err := RootOnly(s.Path(c.Binary())); err != nil {
		return nil, &PrefixError{Prefix: c.Prefix, Err: err}
	}
	rep := &InstallReport{Config: c, Binary: c.Binary()}
	files, err := Render(c)
	if err != nil {
		return nil, err
	}
	binary := s.Path(c.Binary())
	rep.Packaged = s.packaged(c.Binary())
	if !rep.Packaged {
		if err := installBinary(self, binary); err != nil {
			return rep, fmt.Errorf("install %s: %w", binary, err)
		}
		if err := InstallLinks(filepath.Dir(binary), binary, s.Applets); err != nil {
			return rep, fmt.Errorf("applet links: %w", err)
		}
		rep.Files = append(rep.Files, c.Binary())
	}
	if err := s.makeStateDir(c); err != nil {
		return rep, err
	}
	var conf bytes.Buffer
	conf.WriteString("# banger's system install, written by `banger system install`.\n")
	if err := toml.NewEncoder(&conf).Encode(c); err != nil {
		return rep, err
	}
	if err := writeAtomic(s.Path(layout.SystemConfig), conf.Bytes(), 0o644); err != nil {
		return rep, fmt.Errorf("write %s: %w", layout.SystemConfig, err)
	}
	rep.Files = append(rep.Files, layout.SystemConfig)
	for _, p := range slices.Sorted(maps.Keys(files)) {
		write := writeAtomic
		if p == layout.SystemSudoers {
			write = writeSudoers
		}
		if err := write(s.Path(p), files[p], 0o644); err != nil {
			return rep, fmt.Errorf("write %s: %w", p, err)
		}
		rep.Files = append(rep.Files, p)
	}
	// What the other helper mode installed goes: one way to the helper.
	var stale []string
	for _, p := range []string{path.Join(layout.SystemUnitDir, layout.HelperUnit), layout.SystemSudoers} {
		if _, ok := files[p]; !ok && exists(s.Path(p)) {
			stale = append(stale, p)
		}
	}
	if !s.SystemdRunning() {
		rep.Removed, err = s.remove(stale)
		rep.Note = "systemd is not running: units written, not started"
		return rep, err
	}
	if slices.Contains(stale, path.Join(layout.SystemUnitDir, layout.HelperUnit)) {
		systemctl(ctx, "disable", "--now", layout.HelperUnit) // it may not be running
	}
	if rep.Removed, err = s.remove(stale); err != nil {
		return rep, err
	}
	if err := systemctl(ctx, "daemon-reload"); err != nil {
		return rep, err
	}
	units := c.Units()
	// restart, not start: a reinstall must run the new binary and units.
	if err := systemctl(ctx, append([]string{"enable"}, units...)...); err != nil {
		return rep, err
	}
	if err := systemctl(ctx, append([]string{"restart"}, units...)...); err != nil {
		return rep, err
	}
	rep.Started = true
	return rep, nil
}

// UninstallReport says what Uninstall did.
type UninstallReport struct {
	Config  *Config  `json:"config,omitempty"` // nil when install.toml was not there
	Removed []string `json:"removed"`
	Kept    []string `json:"kept,omitempty"` // left in place, and why
}

// Uninstall stops and removes what Install made. The binary and its links
// stay when they belong to the .deb; install.toml and the state directory
// stay unless purge. prefix is used when install.toml is gone.
func (s System) Uninstall(ctx context.Context, prefix string, purge bool) (*UninstallReport, error) {
	rep := &UninstallReport{Removed: []string{}}
	c, err := s.ReadConfig()
	switch {
	case errors.Is(err, os.ErrNotExist):
		c = &Config{Prefix: prefix}
	case err != nil:
		return rep, err
	default:
		rep.Config = c
	}
	units := []string{path.Join(layout.SystemUnitDir, layout.HelperUnit), path.Join(layout.SystemUnitDir, layout.DaemonUnit)}
	if s.SystemdRunning() {
		// Units that are not loaded make this fail; what matters is that
		// nothing of ours runs afterwards.
		systemctl(ctx, "disable", "--now", layout.DaemonUnit, layout.HelperUnit)
	}
	gone := append(units, layout.SystemSudoers)
	if s.packaged(c.Binary()) {
		rep.Kept = append(rep.Kept, c.Binary()+" and its links (they belong to the banger package)")
	} else {
		bin := s.Path(c.Binary())
		links, _ := CheckLinks(filepath.Dir(bin), bin, s.Applets)
		for _, l := range links {
			if l.State == LinkOK && l.Target != "" {
				gone = append(gone, path.Join(c.BinDir(), l.Applet))
			}
		}
		gone = append(gone, c.Binary())
	}
	if purge {
		gone = append(gone, layout.SystemConfigDir, layout.SystemStateDir)
	} else {
		for _, p := range []string{layout.SystemConfig, layout.SystemStateDir} {
			if exists(s.Path(p)) {
				rep.Kept = append(rep.Kept, p+" (--purge removes it)")
			}
		}
	}
	removed, err := s.remove(gone)
	rep.Removed = append(rep.Removed, removed...)
	if err != nil {
		return rep, err
	}
	if s.SystemdRunning() {
		if err := systemctl(ctx, "daemon-reload"); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// ReadConfig reads install.toml.
func (s System) ReadConfig() (*Config, error) {
	var c Config
	if _, err := toml.DecodeFile(s.Path(layout.SystemConfig), &c); err != nil {
		return nil, fmt.Errorf("read %s: %w", layout.SystemConfig, err)
	}
	return &c, nil
}

// packaged reports whether binary (by path from the root) is a file of the
// banger .deb, which dpkg installs and removes.
func (s System) packaged(binary string) bool {
	f, err := os.Open(s.Path("/var/lib/dpkg/info/banger.list"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if sc.Text() == binary {
			return true
		}
	}
	return false
}

// makeStateDir makes the daemon's state directory, the owner's and
// private, as systemd's StateDirectory= would.
func (s System) makeStateDir(c Config) error {
	dir := s.Path(layout.SystemStateDir)
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(layout.SystemStateDir), err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create %s: %w", layout.SystemStateDir, err)
	}
	if err := os.Chown(dir, c.UID, c.GID); err != nil {
		return fmt.Errorf("give %s to %s: %w", layout.SystemStateDir, c.Owner, err)
	}
	return os.Chmod(dir, 0o700)
}

// remove removes each path (from the root; directories with what is in
// them) that exists, and returns those it removed.
func (s System) remove(paths []string) ([]string, error) {
	var removed []string
	for _, p := range paths {
		if !exists(s.Path(p)) {
			continue
		}
		if err := os.RemoveAll(s.Path(p)); err != nil {
			return removed, fmt.Errorf("remove %s: %w", p, err)
		}
		removed = append(removed, p)
	}
	return removed, nil
}

// installBinary copies self to dst through a temporary file beside it and
// a rename, so a running banger is never overwritten in place. Copying a
// binary onto itself does nothing.
func installBinary(self, dst string) error {
	if same, err := sameFile(dst, self); err == nil && same {
		return nil
	}
	src, err := os.Open(self)
	if err != nil {
		return err
	}
	defer src.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return writeAtomicFrom(dst, src, 0o755, nil)
}

// writeAtomic writes b to p through a temporary file and a rename.
func writeAtomic(p string, b []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return writeAtomicFrom(p, bytes.NewReader(b), mode, nil)
}

// writeAtomicFrom copies r to a temporary file beside p and renames it
// over p, once check (if any) accepts the temporary file.
func writeAtomicFrom(p string, r io.Reader, mode os.FileMode, check func(tmp string) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename, there is nothing left
	if _, err := io.Copy(tmp, r); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if check != nil {
		if err := check(tmp.Name()); err != nil {
			return err
		}
	}
	return os.Rename(tmp.Name(), p)
}

// writeSudoers writes a sudoers drop-in, mode 0440, only after visudo
// accepts it: a broken file in /etc/sudoers.d breaks sudo for everyone.
// The temporary name has a dot in it, which sudo skips while it is there.
func writeSudoers(p string, b []byte, _ os.FileMode) error {
	visudo, err := exec.LookPath("visudo")
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if exists(dir + "/visudo") {
				visudo, err = dir+"/visudo", nil
			}
		}
	}
	if err != nil {
		return errors.New("visudo not found: the sudo helper mode needs sudo (apt-get install sudo)")
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return writeAtomicFrom(p, bytes.NewReader(b), 0o440, func(tmp string) error {
		if out, err := exec.Command(visudo, "-cf", tmp).CombinedOutput(); err != nil {
			return fmt.Errorf("visudo -cf refused the rule: %s", strings.TrimSpace(string(out)))
		}
		return nil
	})
}

func systemctl(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// FileStatus is one file of an install.
type FileStatus struct {
	Path   string `json:"path"` // from the root
	Exists bool   `json:"exists"`
	Mode   string `json:"mode,omitempty"`
	Active string `json:"active,omitempty"` // a unit's state, when systemd runs
}

// Status is what is installed.
type Status struct {
	Installed bool         `json:"installed"` // install.toml and the binary are there
	Config    *Config      `json:"config,omitempty"`
	Error     string       `json:"error,omitempty"` // install.toml could not be read
	Systemd   bool         `json:"systemd"`
	Files     []FileStatus `json:"files"`
	Links     []LinkStatus `json:"links,omitempty"`
	Packaged  bool         `json:"packaged"`
}

// Status reports the install's files and, when systemd runs, its units'
// states. prefix is used when install.toml is not there.
func (s System) Status(ctx context.Context, prefix string) *Status {
	st := &Status{Systemd: s.SystemdRunning(), Files: []FileStatus{}}
	c, err := s.ReadConfig()
	switch {
	case err == nil:
		st.Installed, st.Config = true, c
	case !errors.Is(err, os.ErrNotExist):
		st.Error = err.Error()
		fallthrough
	default:
		c = &Config{Prefix: prefix, Helper: HelperService}
	}
	paths := []string{c.Binary(), layout.SystemConfig}
	for _, u := range []string{layout.HelperUnit, layout.DaemonUnit} {
		paths = append(paths, path.Join(layout.SystemUnitDir, u))
	}
	paths = append(paths, layout.SystemSudoers, layout.SystemStateDir)
	for _, p := range paths {
		fs := FileStatus{Path: p}
		if fi, err := os.Lstat(s.Path(p)); err == nil {
			fs.Exists, fs.Mode = true, fmt.Sprintf("%04o", fi.Mode().Perm())
		}
		if st.Systemd && strings.HasPrefix(p, layout.SystemUnitDir+"/") {
			out, _ := exec.CommandContext(ctx, "systemctl", "is-active", path.Base(p)).Output()
			fs.Active = strings.TrimSpace(string(out))
		}
		st.Files = append(st.Files, fs)
	}
	bin := s.Path(c.Binary())
	st.Installed = st.Installed && exists(bin)
	links, _ := CheckLinks(filepath.Dir(bin), bin, s.Applets)
	for _, l := range links {
		if l.Applet == path.Base(c.Binary()) {
			continue // the binary itself, listed above
		}
		l.Path = path.Join(c.BinDir(), l.Applet)
		st.Links = append(st.Links, l)
	}
	st.Packaged = s.packaged(c.Binary())
	return st
}

// RootOnly checks that no one but root can replace the file at path:
// root runs the installed binary (the helper's unit, and in sudo mode the
// sudoers rule lets the owner run it as root without a password), so
// whoever can write it, or any directory above it, can become root. What
// exists of the path, the file and each directory up to /, must be
// root's and writable by no one else; a directory others may write must
// be sticky (as /tmp is: no one may replace what root put there). What
// does not exist yet the install makes, root's.
func RootOnly(path string) error {
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return err
		default:
			st, ok := fi.Sys().(*syscall.Stat_t)
			switch {
			case !ok:
				return fmt.Errorf("%s: cannot read its owner", p)
			case st.Uid != 0:
				return fmt.Errorf("%s is owned by uid %d, who could then replace the binary root runs", p, st.Uid)
			case fi.Mode().Perm()&0o022 != 0 && !(fi.IsDir() && fi.Mode()&fs.ModeSticky != 0):
				return fmt.Errorf("%s is writable by others (mode %04o), who could then replace the binary root runs", p, fi.Mode().Perm())
			}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// PrefixError is an install prefix that someone but root could write.
type PrefixError struct {
	Prefix string
	Err    error
}

func (e *PrefixError) Error() string {
	return fmt.Sprintf("prefix %s: %v; choose a prefix only root can write (the default is %s)", e.Prefix, e.Err, DefaultPrefix)
}

func (e *PrefixError) Unwrap() error { return e.Err }
