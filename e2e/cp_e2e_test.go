package e2e_test

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	ut "banger/internal/untar/untartest"
)

// TestVMCp copies files, directories and symlinks into a running VM and
// out of it, and tar streams both ways (`-`), as docker cp: a directory
// that is there gets the copy in it, otherwise the copy becomes the
// path. Modes and symlinks are kept, set-id bits dropped on the way
// out; a stream with `../` is refused; a path not in the VM is exit 4.
func TestVMCp(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	s.banger("vm", "create", "--name", "box").want(t, 0)
	defer s.banger("vm", "delete", "box")

	src := filepath.Join(s.dir, "proj")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "a"), []byte("A\n"), 0o644)
	os.WriteFile(filepath.Join(src, "sub", "run"), []byte("#!/bin/sh\necho run\n"), 0o755)
	os.Symlink("a", filepath.Join(src, "link"))
	file := filepath.Join(s.dir, "notes.txt")
	os.WriteFile(file, []byte("notes\n"), 0o600)

	// In: a directory into one that is there, a file as a new name.
	if r := s.banger("vm", "cp", src, "box:/tmp").want(t, 0); !strings.Contains(r.stderr, "copied 3 files") {
		t.Errorf("vm cp in: %q", r.stderr)
	}
	s.banger("vm", "cp", "-q", file, "box:/tmp/renamed.txt").want(t, 0)
	got := s.banger("vm", "exec", "box", "--", "sh", "-c",
		"cat /tmp/proj/a /tmp/renamed.txt; readlink /tmp/proj/link; stat -c '%a %n' /tmp/proj/sub/run /tmp/renamed.txt; /tmp/proj/sub/run").want(t, 0).stdout
	if want := "A\nnotes\na\n755 /tmp/proj/sub/run\n600 /tmp/renamed.txt\nrun\n"; got != want {
		t.Errorf("the guest after vm cp in:\n%s\nwant:\n%s", got, want)
	}

	// Out: a directory as a new name, then into one that is there; a
	// set-id bit set in the guest does not come out.
	s.banger("vm", "exec", "box", "--", "chmod", "4755", "/tmp/proj/sub/run").want(t, 0)
	out := filepath.Join(s.dir, "out")
	s.banger("vm", "cp", "box:/tmp/proj", out).want(t, 0)
	if b, _ := os.ReadFile(filepath.Join(out, "a")); string(b) != "A\n" {
		t.Errorf("copied out: a = %q", b)
	}
	if l, _ := os.Readlink(filepath.Join(out, "link")); l != "a" {
		t.Errorf("copied out: link -> %q", l)
	}
	if fi, err := os.Stat(filepath.Join(out, "sub", "run")); err != nil || fi.Mode() != 0o755 {
		t.Errorf("copied out: sub/run %v %v; want 0755 (the set-id bit dropped)", fi.Mode(), err)
	}
	existing := filepath.Join(s.dir, "existing")
	os.Mkdir(existing, 0o755)
	s.banger("vm", "cp", "-q", "box:/tmp/proj/sub", existing).want(t, 0)
	if _, err := os.Stat(filepath.Join(existing, "sub", "run")); err != nil {
		t.Errorf("copied out into a directory that is there: %v", err)
	}

	// Streams: out to stdout, in from stdin.
	stream := s.banger("vm", "cp", "box:/tmp/renamed.txt", "-").want(t, 0).stdout
	tr := tar.NewReader(strings.NewReader(stream))
	hdr, err := tr.Next()
	body, _ := io.ReadAll(tr)
	if err != nil || hdr.Name != "renamed.txt" || string(body) != "notes\n" {
		t.Errorf("vm cp to -: %+v %q %v", hdr, body, err)
	}
	in := ut.Archive(t, ut.Dir("d/"), ut.File("d/x", "from a stream"))
	s.runIn(in, time.Minute, bangerBin, "vm", "cp", "-", "box:/srv").want(t, 0)
	if got := s.banger("vm", "exec", "box", "--", "cat", "/srv/d/x").want(t, 0).stdout; got != "from a stream" {
		t.Errorf("vm cp from -: %q", got)
	}
	hostile := ut.Archive(t, ut.File("../escaped", "out"))
	if r := s.runIn(hostile, time.Minute, bangerBin, "vm", "cp", "-", "box:/srv"); r.code == 0 || !strings.Contains(r.stderr, ".. are refused") {
		t.Errorf("a stream with ../: exit %d, %q", r.code, r.stderr)
	}
	s.banger("vm", "exec", "box", "--", "test", "!", "-e", "/escaped").want(t, 0)

	// A guest file that claims more than a copy out may take (a sparse
	// file of 100 GiB) ends the copy at its header, with nothing of it
	// written; the daemon and the VM go on.
	s.banger("vm", "exec", "box", "--", "sh", "-c", "mkdir /tmp/big && dd if=/dev/null of=/tmp/big/huge bs=1 seek=100G 2>/dev/null").want(t, 0)
	big := filepath.Join(s.dir, "big")
	if r := s.banger("vm", "cp", "box:/tmp/big", big); r.code != 1 || !strings.Contains(r.stderr, "larger than allowed") {
		t.Errorf("a 100 GiB file out of the guest: exit %d, %q", r.code, r.stderr)
	}
	if fi, err := os.Stat(filepath.Join(big, "huge")); err == nil {
		t.Errorf("the refused file was written (%d bytes)", fi.Size())
	}
	s.banger("vm", "exec", "box", "--", "true").want(t, 0)

	// Refusals: no such path in the VM (4), on the host (4), no VM side
	// or two (2).
	s.banger("vm", "cp", "box:/nope", filepath.Join(s.dir, "nope")).want(t, 4)
	s.banger("vm", "cp", filepath.Join(s.dir, "nope"), "box:/tmp").want(t, 4)
	s.banger("vm", "cp", file, filepath.Join(s.dir, "x")).want(t, 2)
	s.banger("vm", "cp", "box:/tmp", "box:/srv").want(t, 2)
	if _, err := os.Stat(filepath.Join(s.dir, "nope")); err == nil {
		t.Error("a failed copy out left its destination")
	}
}

// TestVMRunCollect: --collect copies paths out after the command, also
// when it failed, before --rm deletes the VM; banger keeps the command's
// status; a path the command did not make fails a command that worked.
func TestVMRunCollect(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	repo := filepath.Join(s.dir, "repo")
	os.MkdirAll(repo, 0o755)
	os.WriteFile(filepath.Join(repo, "input"), []byte("in\n"), 0o644)
	got, hostname := filepath.Join(s.dir, "got"), filepath.Join(s.dir, "hostname")
	r := s.banger("vm", "run", "--rm", "-q", "--collect", "out:"+got, "--collect", "/etc/hostname:"+hostname, repo, "--",
		"sh", "-c", "mkdir out && cp input out/copied && echo built > out/artifact && exit 3")
	if r.code != 3 {
		t.Fatalf("vm run --collect: exit %d, want the command's 3: %s", r.code, r.stderr)
	}
	for name, want := range map[string]string{"artifact": "built\n", "copied": "in\n"} {
		if b, _ := os.ReadFile(filepath.Join(got, name)); string(b) != want {
			t.Errorf("collected %s: %q, want %q", name, b, want)
		}
	}
	if b, err := os.ReadFile(hostname); err != nil || len(b) == 0 {
		t.Errorf("collected /etc/hostname: %q %v", b, err)
	}
	if r := s.banger("vm", "run", "--rm", "-q", "--collect", "never:"+filepath.Join(s.dir, "never"), "--", "true"); r.code != 4 || !strings.Contains(r.stderr, "--collect never") {
		t.Errorf("a path the command did not make: exit %d, %q; want 4 and the path named", r.code, r.stderr)
	}
	var vms []api.VM
	s.banger("vm", "list", "--json").want(t, 0).json(t, &vms)
	if len(vms) != 0 {
		t.Errorf("--rm left VMs: %v", vms)
	}
}
