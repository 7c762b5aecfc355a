package imagestore

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"banger/applets/agent/boot"
	"banger/rpc"
)

// requireTools skips the test when a tool it runs is not installed (CI
// installs them all: e2fsprogs, qemu-utils, busybox-static).
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, name := range tools {
		if _, err := findTool(name); err != nil {
			t.Skipf("%s is not installed (Debian package %s): %v", name, toolPackage(name), err)
		}
	}
}

// writeRandom writes n random bytes to a new file.
func writeRandom(t *testing.T, path string, n int) string {
	t.Helper()
	data := make([]byte, n)
	rand.Read(data)
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// fixture is a store with a fake kernel and agent to import with.
type fixture struct {
	store  *Store
	dir    string // scratch space outside the store
	kernel string
	agent  string
}

func newFixture(t *testing.T, opts Options) *fixture {
	t.Helper()
	requireTools(t, "mkfs.ext4", "debugfs", "e2fsck")
	dir := t.TempDir()
	s, err := Open(context.Background(), filepath.Join(dir, "images"), opts)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{
		store:  s,
		dir:    dir,
		kernel: writeRandom(t, filepath.Join(dir, "vmlinuz"), 300<<10),
		agent:  writeRandom(t, filepath.Join(dir, "banger"), 700<<10+123),
	}
}

// spec is an import of name with the fixture's kernel and agent, 64 MiB.
func (f *fixture) spec(name string) ImportSpec {
	return ImportSpec{Name: name, KernelPath: f.kernel, AgentBinary: f.agent, SizeMiB: 64}
}

// wantCode fails unless err carries the rpc code.
func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want code %s", code)
	}
	if got := rpc.CodeOf(err); got != code {
		t.Fatalf("error %q has code %s; want %s", err, got, code)
	}
}

// debugfsOut runs one read-only debugfs command on an image file.
func debugfsOut(t *testing.T, img, cmd string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", cmd, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v\n%s", cmd, err, out)
	}
	return string(out)
}

// statIn is debugfs's stat of a path in an image, failing the test when
// there is no such path.
func statIn(t *testing.T, img, p string) inodeStat {
	t.Helper()
	st, err := statInImage(context.Background(), img, p)
	if err != nil {
		t.Fatalf("stat %s in %s: %v", p, img, err)
	}
	return st
}

// catIn returns a file's content in an image.
func catIn(t *testing.T, img, p string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+debugfsQuote(p), img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", p, err)
	}
	return string(out)
}

// checkAgent checks the agent in an image: there, 0755, root's, its size.
func checkAgent(t *testing.T, img, agent string) {
	t.Helper()
	fi, err := os.Stat(agent)
	if err != nil {
		t.Fatal(err)
	}
	st := statIn(t, img, boot.AgentPath)
	if st.typ != "regular" || st.perm != 0o755 || st.uid != 0 || st.gid != 0 || st.size != fi.Size() {
		t.Fatalf("agent in image: %+v; want regular 0755 0:0 size %d", st, fi.Size())
	}
	ls := debugfsOut(t, img, "ls -l /sbin/.")
	if !strings.Contains(ls, "banger-agent") {
		t.Fatalf("ls -l /sbin has no banger-agent:\n%s", ls)
	}
}

// fsckClean runs e2fsck -fn on an image and fails the test on any finding.
func fsckClean(t *testing.T, img string) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", img, err, out)
	}
}

// tmpEntries lists what is in the store's temporary directory.
func tmpEntries(t *testing.T, s *Store) []string {
	t.Helper()
	entries, err := os.ReadDir(s.path(tmpDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
