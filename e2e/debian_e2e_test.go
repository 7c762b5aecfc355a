package e2e_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
)

// debianSandbox is a sandbox whose VMs boot the default image (the
// Debian one) when they name none, as a user's do.
func debianSandbox(t *testing.T) *sandbox {
	t.Helper()
	needGuests(t)
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		t.Skip("mmdebstrap is not installed (packaging/test.sh installs it)")
	}
	s := newSandbox(t)
	s.env = withoutEnv(s.env, "BANGER_IMAGE")
	return s
}

// withoutEnv is env without the variable name.
func withoutEnv(env []string, name string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// A real repository's tests, in a Makefile: a C program compiled and
// run, a passing test and one failing on purpose, so make's own status
// (2) is what banger exits with.
var makeRepo = map[string]string{
	"hello.c": "#include <stdio.h>\nint main(void) { printf(\"hello from C\\n\"); return 0; }\n",
	"Makefile": "test: test-hello test-fails\n\n" +
		"hello: hello.c\n\tcc -o hello hello.c\n\n" +
		"test-hello: hello\n\t./hello\n\n" +
		"test-fails:\n\t@echo failing on purpose; exit 3\n",
}

// TestDefaultImageIsDebian builds the default image from Debian's
// packages on first use, showing the build's progress (bytes downloaded,
// then the steps), and runs a real repository's `make test` in it: the
// C program compiles and runs, make's status is banger's. git and python3
// work, and apt knows Debian's packages.
func TestDefaultImageIsDebian(t *testing.T) {
	s := debianSandbox(t)
	s.daemon()

	// The first create builds the image; its stage says what it does.
	start := time.Now()
	var op api.Operation
	if err := s.call(api.MethodVMCreateBegin, api.VMCreate{Name: "first"}, &op); err != nil {
		t.Fatal(err)
	}
	details := map[string]bool{}
	for !op.Done() {
		time.Sleep(100 * time.Millisecond)
		if err := s.call(api.MethodOperationStatus, api.OperationID{ID: op.ID}, &op); err != nil {
			t.Fatal(err)
		}
		for _, st := range op.Stages {
			if st.Name == "resolve image" && st.Detail != "" {
				details[st.Detail] = true
			}
		}
	}
	if op.State != api.OpSucceeded {
		t.Fatalf("first create: %+v\n%s", op.Error, lastLines(s.daemonLog(), 20))
	}
	t.Logf("default image built and booted in %s", time.Since(start).Round(time.Second))
	var gotBytes, steps bool
	for d := range details {
		gotBytes = gotBytes || strings.HasPrefix(d, "downloading packages") && strings.HasSuffix(d, "iB")
		steps = steps || strings.HasPrefix(d, "installing")
	}
	if !gotBytes || !steps {
		t.Errorf("the build's progress lacks the bytes downloaded (%v) or its steps (%v): %v", gotBytes, steps, details)
	}
	var im api.Image
	s.banger("image", "show", "--json", api.DefaultImage).want(t, 0).json(t, &im)
	s.banger("vm", "delete", "first").want(t, 0)

	repo := filepath.Join(s.dir, "project")
	if err := os.MkdirAll(repo, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range makeRepo {
		if err := os.WriteFile(filepath.Join(repo, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gitCommit(t, repo, ".")
	r := s.banger("vm", "run", "--rm", repo, "--", "make", "test")
	if r.code != 2 || !strings.Contains(r.stdout, "hello from C") || !strings.Contains(r.stdout, "failing on purpose") {
		t.Errorf("make test: exit %d (want make's 2), stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	r = s.banger("vm", "run", "--rm", "--", "sh", "-c",
		"git --version && python3 -c 'print(6*7)' && . /etc/os-release && echo $ID && grep -c -e ' bookworm main' -e ' bookworm-updates main' -e ' bookworm-security main' /etc/apt/sources.list")
	if r.code != 0 || !strings.Contains(r.stdout, "git version") || !strings.Contains(r.stdout, "\n42\ndebian\n3\n") {
		t.Errorf("git, python3, apt: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	// It is made once: later VMs boot the same image.
	var again api.Image
	s.banger("image", "show", "--json", api.DefaultImage).want(t, 0).json(t, &again)
	if again.Digest != im.Digest {
		t.Errorf("the default image was made again: %s, then %s", im.Digest, again.Digest)
	}

	// Another banger (an upgrade: here this one with bytes after its
	// ELF image, which change its sha256, not what it runs) gives the
	// image its agent in a copy of the root, without building the root
	// again: the apt sources, the packages, the origin stay.
	s.stopDaemon()
	upgraded := filepath.Join(s.dir, "banger-upgraded")
	data, err := os.ReadFile(bangerBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(upgraded, append(data, "another build"...), 0o755); err != nil {
		t.Fatal(err)
	}
	s.startProcess(0, &bytes.Buffer{}, upgraded, "bangerd", "--helper", "none")
	waitSocket(t, s.socket())
	r = s.banger("vm", "run", "--rm", "--", "sh", "-c", "git --version && cat /etc/apt/sources.list | wc -l")
	if r.code != 0 || !strings.Contains(r.stdout, "git version") {
		t.Errorf("after an upgrade: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stderr, "installing") || strings.Contains(r.stderr, "downloading") {
		t.Errorf("the root was built again after an upgrade:\n%s", r.stderr)
	}
	var upgradedIm api.Image
	s.banger("image", "show", "--json", api.DefaultImage).want(t, 0).json(t, &upgradedIm)
	if upgradedIm.Digest == im.Digest || !strings.Contains(lastLines(s.daemonLog(), 400), "given this banger's agent") {
		t.Errorf("the default image after an upgrade: digest %s (was %s); log:\n%s", upgradedIm.Digest, im.Digest, lastLines(s.daemonLog(), 20))
	}
}

// TestDefaultImageWithoutAMirror: a host that cannot reach a Debian
// mirror gets a clear error naming the busybox image and an import,
// leaves no image behind, and the tiny image still boots.
func TestDefaultImageWithoutAMirror(t *testing.T) {
	s := debianSandbox(t)
	// Nothing listens on the discard port of loopback.
	s.env = append(s.env, "BANGER_DEBIAN_MIRROR=http://127.0.0.1:9/debian")
	s.daemon()
	r := s.banger("vm", "run", "--rm", "--", "true").want(t, 7)
	for _, want := range []string{"cannot build the Debian", "127.0.0.1:9", "--image tiny", "banger image import"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("error lacks %q: %q", want, r.stderr)
		}
	}
	if r := s.banger("image", "list").want(t, 0); strings.Contains(r.stdout, api.DefaultImage) {
		t.Errorf("a failed build left an image: %q", r.stdout)
	}
	if tmp, _ := os.ReadDir(filepath.Join(s.state, "banger", "images", ".tmp")); len(tmp) != 0 {
		t.Errorf("a failed build left %d entries in the store's tmp", len(tmp))
	}
	s.banger("vm", "run", "--rm", "--image", api.TinyImage, "--", "true").want(t, 0)
}
