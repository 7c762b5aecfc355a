package untar

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	ut "banger/internal/untar/untartest"
)

func TestUnpack(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "made", "by", "unpack")
	dirTime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	d := ut.Dir("d/")
	d.Mode, d.ModTime = 0o750, dirTime
	script := ut.File("x.sh", "#!/bin/sh\n")
	script.Mode = 0o4755
	tarball := ut.Archive(t,
		ut.Dir("./"),
		d,
		ut.File("d/f", "hello"),
		script,
		ut.Link(tar.TypeSymlink, "l", "d/f"),
		ut.Link(tar.TypeSymlink, "abs", "/etc/passwd"),
		ut.Link(tar.TypeLink, "d/h", "d/f"),
		ut.File("deep/er/g", "no parents in the archive"),
		ut.File("./dot/./slash//name", "cleaned"),
	)
	st, err := Unpack(dir, bytes.NewReader(tarball), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Entries != 9 || st.Files != 4 || st.Bytes != int64(len("hello#!/bin/sh\nno parents in the archivecleaned")) {
		t.Errorf("stats %+v", st)
	}
	check := func(name string, mode os.FileMode, mtime time.Time) {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Error(err)
			return
		}
		if fi.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode(), mode)
		}
		if !mtime.IsZero() && !fi.ModTime().Equal(mtime) {
			t.Errorf("%s: mtime %v, want %v", name, fi.ModTime(), mtime)
		}
	}
	check("d", os.ModeDir|0o750, dirTime)
	check("d/f", 0o644, ut.Time)
	// Set-id bits are dropped: every file is root's in the guest, and a
	// user's set-uid file must not become a set-uid root one.
	check("x.sh", 0o755, ut.Time)
	check("l", os.ModeSymlink|0o777, ut.Time)
	check("deep/er", os.ModeDir|0o755, time.Time{})
	if target, _ := os.Readlink(filepath.Join(dir, "abs")); target != "/etc/passwd" {
		t.Errorf("abs -> %q", target)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "l")); string(b) != "hello" {
		t.Errorf("through l: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "dot/slash/name")); string(b) != "cleaned" {
		t.Errorf("dot/slash/name: %q", b)
	}
	f, _ := os.Stat(filepath.Join(dir, "d/f"))
	h, _ := os.Stat(filepath.Join(dir, "d/h"))
	if !os.SameFile(f, h) {
		t.Error("d/h is not a hard link of d/f")
	}

	// Again over itself: files are replaced, directories kept.
	if _, err := Unpack(dir, bytes.NewReader(ut.Archive(t, ut.File("d/f", "again"), ut.Dir("l/"))), Options{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "d/h")); string(b) != "hello" {
		t.Errorf("the hard link was written through: %q", b)
	}
	if fi, err := os.Lstat(filepath.Join(dir, "l")); err != nil || !fi.IsDir() {
		t.Errorf("the symlink l did not give way to a directory: %v", err)
	}
}

func TestUnpackRefuses(t *testing.T) {
	for _, c := range []struct {
		name    string
		entries []ut.Entry
		want    string
	}{
		{"dot-dot", []ut.Entry{ut.File("../x", "out")}, "names with .. are refused"},
		{"inner dot-dot", []ut.Entry{ut.File("a/../../x", "out")}, "names with .. are refused"},
		{"absolute", []ut.Entry{ut.File("/etc/x", "out")}, "absolute names are refused"},
		{"through a symlink", []ut.Entry{ut.Link(tar.TypeSymlink, "evil", "../outside"), ut.File("evil/x", "out")}, "a symlink is in the way"},
		{"through an absolute symlink", []ut.Entry{ut.Link(tar.TypeSymlink, "evil", "OUTSIDE"), ut.File("evil/x", "out")}, "a symlink is in the way"},
		{"dir through a symlink", []ut.Entry{ut.Link(tar.TypeSymlink, "evil", "OUTSIDE"), ut.Dir("evil/sub/")}, "a symlink is in the way"},
		{"hard link outside", []ut.Entry{ut.Link(tar.TypeLink, "h", "../outside/secret")}, "names with .. are refused"},
		{"hard link through a symlink", []ut.Entry{ut.Link(tar.TypeSymlink, "evil", "OUTSIDE"), ut.Link(tar.TypeLink, "h", "evil/secret")}, "a symlink is in the way"},
		{"character device", []ut.Entry{{Header: tar.Header{Typeflag: tar.TypeChar, Name: "null", Devmajor: 1, Devminor: 3}}}, "devices and fifos are not unpacked"},
		{"block device", []ut.Entry{{Header: tar.Header{Typeflag: tar.TypeBlock, Name: "sda", Devmajor: 8}}}, "devices and fifos are not unpacked"},
		{"fifo", []ut.Entry{{Header: tar.Header{Typeflag: tar.TypeFifo, Name: "p"}}}, "devices and fifos are not unpacked"},
		{"file as the target", []ut.Entry{ut.File(".", "x")}, "only a directory may name the target"},
		{"symlink as the target", []ut.Entry{ut.Link(tar.TypeSymlink, ".", "/etc")}, "only a directory may name the target"},
	} {
		t.Run(c.name, func(t *testing.T) {
			top := t.TempDir()
			outside := filepath.Join(top, "outside")
			os.Mkdir(outside, 0o755)
			os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o600)
			for i := range c.entries {
				c.entries[i].Linkname = strings.ReplaceAll(c.entries[i].Linkname, "OUTSIDE", outside)
			}
			dir := filepath.Join(top, "dir")
			_, err := Unpack(dir, bytes.NewReader(ut.Archive(t, c.entries...)), Options{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("unpack = %v, want %q", err, c.want)
			}
			if entries, _ := os.ReadDir(outside); len(entries) != 1 {
				t.Errorf("something was written outside: %v", entries)
			}
			if entries, _ := os.ReadDir(top); len(entries) != 2 {
				t.Errorf("something was written beside the directory: %v", entries)
			}
			if b, _ := os.ReadFile(filepath.Join(outside, "secret")); string(b) != "secret" {
				t.Errorf("the secret became %q", b)
			}
		})
	}
}

func TestUnpackReplacesSymlinkWithoutFollowing(t *testing.T) {
	top := t.TempDir()
	target := filepath.Join(top, "target")
	os.WriteFile(target, []byte("keep"), 0o644)
	dir := filepath.Join(top, "dir")
	_, err := Unpack(dir, bytes.NewReader(ut.Archive(t, ut.Link(tar.TypeSymlink, "f", target), ut.File("f", "new"))), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Errorf("written through the symlink: %q", b)
	}
	if fi, _ := os.Lstat(filepath.Join(dir, "f")); fi == nil || !fi.Mode().IsRegular() {
		t.Errorf("f is not the new file: %v", fi)
	}
}

func TestUnpackBadStream(t *testing.T) {
	good := ut.Archive(t, ut.File("a", strings.Repeat("x", 3000)))
	for name, data := range map[string][]byte{
		"truncated": good[:1000],
		"garbage":   bytes.Repeat([]byte("not a tar header "), 64),
	} {
		if _, err := Unpack(t.TempDir(), bytes.NewReader(data), Options{}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestEntryPath(t *testing.T) {
	for name, want := range map[string]string{"a": "a", "./a/": "a", "a//b/./c": "a/b/c", ".": "", "./": "", "a..b": "a..b", "..a/b": "..a/b"} {
		if got, err := entryPath(name); err != nil || got != want {
			t.Errorf("entryPath(%q) = %q, %v; want %q", name, got, err, want)
		}
	}
	for _, name := range []string{"", "..", "../a", "a/..", "a/../b", "/a", "//a", "a\x00b"} {
		if got, err := entryPath(name); err == nil {
			t.Errorf("entryPath(%q) = %q, want an error", name, got)
		}
	}
}

func TestOpenBeneathRefusesSymlinks(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "real"), 0o755)
	os.Symlink("real", filepath.Join(dir, "link"))
	root, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(root)
	if fd, err := openBeneath(root, "link", unix.O_PATH|unix.O_DIRECTORY, 0); err != unix.ELOOP {
		unix.Close(fd)
		t.Errorf("through a symlink: %v, want ELOOP", err)
	}
	if fd, err := openBeneath(root, "real/../..", unix.O_PATH|unix.O_DIRECTORY, 0); err != unix.EXDEV {
		unix.Close(fd)
		t.Errorf("above the root: %v, want EXDEV", err)
	}
}

// An unpack for a user gives it every entry, and the directory made for
// them; a symlink is chowned itself, never its target.
func TestUnpackOwned(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root (the agent runs as root)")
	}
	target := filepath.Join(t.TempDir(), "outside")
	os.WriteFile(target, nil, 0o644)
	dir := filepath.Join(t.TempDir(), "home", "app", "repo")
	script := ut.File("bin/run", "#!/bin/sh\n")
	script.Mode = 0o4755
	tarball := ut.Archive(t, ut.Dir("src/"), ut.File("src/main.c", "int main;"), script, ut.Link(tar.TypeSymlink, "out", target))
	if _, err := Unpack(dir, bytes.NewReader(tarball), Options{Owner: &Owner{UID: 1000, GID: 1001}}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{".", "src", "src/main.c", "bin", "bin/run", "out"} {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != 1000 || st.Gid != 1001 {
			t.Errorf("%s is %d:%d; want 1000:1001", name, st.Uid, st.Gid)
		}
	}
	if fi, _ := os.Stat(filepath.Join(dir, "bin/run")); fi.Mode().Perm() != 0o755 || fi.Mode()&os.ModeSetuid != 0 {
		t.Errorf("bin/run's mode %v; a chown must not leave a set-id bit it did not mean", fi.Mode())
	}
	if fi, _ := os.Lstat(target); fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Error("the symlink's target was chowned")
	}
}

// A stream past its bounds stops there, with ErrTooBig: a file that
// claims more than is allowed is not written, nor are entries past the
// count.
func TestUnpackBounded(t *testing.T) {
	dir := t.TempDir()
	_, err := Unpack(dir, bytes.NewReader(ut.Archive(t, ut.File("a", "1234"), ut.File("b", "5678"))), Options{MaxBytes: 6})
	if !errors.Is(err, ErrTooBig) {
		t.Errorf("8 bytes of files, at most 6: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "b")); err == nil {
		t.Error("the file past the bound was written")
	}
	_, err = Unpack(t.TempDir(), bytes.NewReader(ut.Archive(t, ut.Dir("d/"), ut.File("d/a", ""), ut.File("d/b", ""))), Options{MaxEntries: 2})
	if !errors.Is(err, ErrTooBig) {
		t.Errorf("3 entries, at most 2: %v", err)
	}
	if _, err := Unpack(t.TempDir(), bytes.NewReader(ut.Archive(t, ut.File("a", "1234"))), Options{MaxBytes: 4, MaxEntries: 1}); err != nil {
		t.Errorf("a stream at its bounds: %v", err)
	}
}

// A copy of one file or directory goes into a directory that is there,
// or as a path that is not, as cp does; an entry under another top name
// is refused, hard links included.
func TestUnpackInto(t *testing.T) {
	root := t.TempDir()
	tree := ut.Archive(t, ut.Dir("src/"), ut.File("src/a", "A"), ut.Link(tar.TypeLink, "src/h", "src/a"))
	into := filepath.Join(root, "there")
	os.Mkdir(into, 0o755)
	dir, opts := Into(into, "src")
	if _, err := Unpack(dir, bytes.NewReader(tree), opts); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(into, "src", "h")); string(b) != "A" {
		t.Errorf("into a directory: %q", b)
	}
	as := filepath.Join(root, "renamed")
	dir, opts = Into(as, "src")
	if _, err := Unpack(dir, bytes.NewReader(tree), opts); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(as, "h")); string(b) != "A" {
		t.Errorf("as a new name: %q", b)
	}
	file := filepath.Join(root, "file.txt")
	dir, opts = Into(file, "a")
	if _, err := Unpack(dir, bytes.NewReader(ut.Archive(t, ut.File("a", "one file"))), opts); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(file); string(b) != "one file" {
		t.Errorf("a file as a new name: %q", b)
	}
	for _, hostile := range [][]ut.Entry{
		{ut.File("src/a", "A"), ut.File("other", "x")},
		{ut.Link(tar.TypeLink, "src/h", "elsewhere")},
	} {
		dir, opts = Into(filepath.Join(root, "h"), "src")
		if _, err := Unpack(dir, bytes.NewReader(ut.Archive(t, hostile...)), opts); err == nil || !strings.Contains(err.Error(), "not in src") {
			t.Errorf("an entry outside the copy's top: %v", err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "other")); err == nil {
		t.Error("an entry outside the copy's top was written")
	}
}
