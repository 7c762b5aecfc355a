package agent

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/agentlink"
	"banger/internal/session"
)

// entry is a tar entry to write; a zero Mode is 0o644, a zero ModTime a
// fixed time.
type entry struct {
	tar.Header
	body string
}

func file(name, body string) entry {
	return entry{tar.Header{Typeflag: tar.TypeReg, Name: name}, body}
}

func dirEntry(name string) entry { return entry{tar.Header{Typeflag: tar.TypeDir, Name: name}, ""} }

func link(typ byte, name, target string) entry {
	return entry{tar.Header{Typeflag: typ, Name: name, Linkname: target}, ""}
}

var testTime = time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)

func archive(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Header
		h.Size = int64(len(e.body))
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.ModTime.IsZero() {
			h.ModTime = testTime
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestUnpack(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "made", "by", "unpack")
	dirTime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	d := dirEntry("d/")
	d.Mode, d.ModTime = 0o750, dirTime
	script := file("x.sh", "#!/bin/sh\n")
	script.Mode = 0o4755
	tarball := archive(t,
		dirEntry("./"),
		d,
		file("d/f", "hello"),
		script,
		link(tar.TypeSymlink, "l", "d/f"),
		link(tar.TypeSymlink, "abs", "/etc/passwd"),
		link(tar.TypeLink, "d/h", "d/f"),
		file("deep/er/g", "no parents in the archive"),
		file("./dot/./slash//name", "cleaned"),
	)
	st, err := unpack(dir, bytes.NewReader(tarball), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.entries != 9 || st.files != 4 || st.bytes != int64(len("hello#!/bin/sh\nno parents in the archivecleaned")) {
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
	check("d/f", 0o644, testTime)
	// Set-id bits are dropped: every file is root's in the guest, and a
	// user's set-uid file must not become a set-uid root one.
	check("x.sh", 0o755, testTime)
	check("l", os.ModeSymlink|0o777, testTime)
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
	if _, err := unpack(dir, bytes.NewReader(archive(t, file("d/f", "again"), dirEntry("l/"))), nil); err != nil {
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
		entries []entry
		want    string
	}{
		{"dot-dot", []entry{file("../x", "out")}, "names with .. are refused"},
		{"inner dot-dot", []entry{file("a/../../x", "out")}, "names with .. are refused"},
		{"absolute", []entry{file("/etc/x", "out")}, "absolute names are refused"},
		{"through a symlink", []entry{link(tar.TypeSymlink, "evil", "../outside"), file("evil/x", "out")}, "a symlink is in the way"},
		{"through an absolute symlink", []entry{link(tar.TypeSymlink, "evil", "OUTSIDE"), file("evil/x", "out")}, "a symlink is in the way"},
		{"dir through a symlink", []entry{link(tar.TypeSymlink, "evil", "OUTSIDE"), dirEntry("evil/sub/")}, "a symlink is in the way"},
		{"hard link outside", []entry{link(tar.TypeLink, "h", "../outside/secret")}, "names with .. are refused"},
		{"hard link through a symlink", []entry{link(tar.TypeSymlink, "evil", "OUTSIDE"), link(tar.TypeLink, "h", "evil/secret")}, "a symlink is in the way"},
		{"character device", []entry{{tar.Header{Typeflag: tar.TypeChar, Name: "null", Devmajor: 1, Devminor: 3}, ""}}, "devices and fifos are not unpacked"},
		{"block device", []entry{{tar.Header{Typeflag: tar.TypeBlock, Name: "sda", Devmajor: 8}, ""}}, "devices and fifos are not unpacked"},
		{"fifo", []entry{{tar.Header{Typeflag: tar.TypeFifo, Name: "p"}, ""}}, "devices and fifos are not unpacked"},
		{"file as the target", []entry{file(".", "x")}, "only a directory may name the target"},
		{"symlink as the target", []entry{link(tar.TypeSymlink, ".", "/etc")}, "only a directory may name the target"},
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
			_, err := unpack(dir, bytes.NewReader(archive(t, c.entries...)), nil)
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
	_, err := unpack(dir, bytes.NewReader(archive(t, link(tar.TypeSymlink, "f", target), file("f", "new"))), nil)
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
	good := archive(t, file("a", strings.Repeat("x", 3000)))
	for name, data := range map[string][]byte{
		"truncated": good[:1000],
		"garbage":   bytes.Repeat([]byte("not a tar header "), 64),
	} {
		if _, err := unpack(t.TempDir(), bytes.NewReader(data), nil); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestUntarSession(t *testing.T) {
	a := newTestAgent(t)
	dir := filepath.Join(t.TempDir(), "ws")
	untar := func(data []byte) (session.ExitStatus, error) {
		s, err := a.open(agentlink.MethodUntar, session.Untar{Dir: dir})
		if err != nil {
			return session.ExitStatus{}, err
		}
		return session.Run(s, session.Stdio{Stdin: bytes.NewReader(data)})
	}
	big := strings.Repeat("0123456789abcdef", 300<<10/16)
	st, err := untar(archive(t, file("a/b", "bee"), file("big", big)))
	if err != nil || st != (session.ExitStatus{}) {
		t.Fatalf("untar: %+v, %v", st, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "big")); string(b) != big {
		t.Errorf("big: %d bytes", len(b))
	}
	st, err = untar(archive(t, file("../x", "out")))
	if err != nil || st.Code != 1 || !strings.Contains(st.Error, `unpack "../x": names with .. are refused`) {
		t.Errorf("hostile untar: %+v, %v", st, err)
	}
	st, err = untar([]byte("this is no tar stream"))
	if err != nil || st.Code != 1 || !strings.Contains(st.Error, "read the tar stream") {
		t.Errorf("bad untar: %+v, %v", st, err)
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
