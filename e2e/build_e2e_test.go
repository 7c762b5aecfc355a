package e2e_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
)

// buildInputs writes what the builds copy: a directory (a script, a file
// in a subdirectory, a symlink) and a single file.
func buildInputs(t *testing.T, dir string) (app, conf string) {
	t.Helper()
	app, conf = filepath.Join(dir, "app"), filepath.Join(dir, "app.conf")
	for name, body := range map[string]string{"hello.sh": "echo hello from the build\n", "sub/data": "data\n"} {
		p := filepath.Join(app, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("sub/data", filepath.Join(app, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte("mode=test\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	return app, conf
}

// noBuildLeftovers fails if a build left a VM or a base image behind.
func noBuildLeftovers(t *testing.T, s *sandbox) {
	t.Helper()
	var vms []api.VM
	s.banger("vm", "list", "--json").want(t, 0).json(t, &vms)
	for _, v := range vms {
		if strings.HasPrefix(v.Name, "build-") {
			t.Errorf("the build left its VM %s (%s)", v.Name, v.State)
		}
	}
	var ims []api.Image
	s.banger("image", "list", "--json").want(t, 0).json(t, &ims)
	for _, im := range ims {
		if strings.HasPrefix(im.Name, "build-") {
			t.Errorf("the build left its base image %s", im.Name)
		}
	}
}

// TestImageBuild builds on the tiny image with copies and commands: the
// image has what they made, a second identical build does nothing, a
// failing command fails the build with its output and status and leaves
// nothing, and a recipe file says the same as the flags.
func TestImageBuild(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	app, conf := buildInputs(t, s.dir)

	flags := []string{"image", "build", "--from", "tiny", "--copy", app + ":/opt/app", "--copy", conf + ":/etc/app.conf",
		"--run", "sh /opt/app/hello.sh > /built", "--run", "test -L /opt/app/link && cat /opt/app/link >> /built", "built"}
	first := s.banger(flags...).want(t, 0)
	for _, stage := range []string{"check cache done", "wait for agent done", "copy 1 done", "copy 2 done", "run 1 done", "run 2 done", "commit done"} {
		if !strings.Contains(first.stderr, stage) {
			t.Errorf("no %q among the build's stages:\n%s", stage, first.stderr)
		}
	}
	var im api.Image
	s.banger("image", "show", "--json", "built").want(t, 0).json(t, &im)
	if !strings.HasPrefix(im.BuildKey, "sha256:") {
		t.Errorf("built image's build key %q", im.BuildKey)
	}
	if show := s.banger("image", "show", "built").want(t, 0).stdout; !strings.Contains(show, "build key:") {
		t.Errorf("image show has no build key:\n%s", show)
	}
	got := s.banger("vm", "run", "--rm", "--image", "built", "--", "sh", "-c",
		"cat /built; cat /etc/app.conf; stat -c '%a %n' /etc/app.conf /opt/app/hello.sh; cat /opt/app/sub/data").want(t, 0).stdout
	want := "hello from the build\ndata\nmode=test\n640 /etc/app.conf\n755 /opt/app/hello.sh\ndata\n"
	if got != want {
		t.Errorf("a VM of the built image sees:\n%s\nwant:\n%s", got, want)
	}

	// The same recipe and base: nothing is built again.
	again := s.banger(flags...).want(t, 0)
	if strings.Contains(again.stderr, "wait for agent done") || strings.Contains(again.stderr, "run 1 done") {
		t.Errorf("an identical build ran again:\n%s", again.stderr)
	}
	var im2 api.Image
	s.banger("image", "show", "--json", "built").want(t, 0).json(t, &im2)
	if im2.Digest != im.Digest || !im2.Created.Equal(im.Created) {
		t.Errorf("an identical build made a new image: %s %v, was %s %v", im2.Digest, im2.Created, im.Digest, im.Created)
	}
	// Another content under the same name is refused, not replaced.
	os.WriteFile(conf, []byte("mode=changed\n"), 0o640)
	if r := s.banger(flags...).want(t, 5); !strings.Contains(r.stderr, "not built from this recipe") {
		t.Errorf("a changed copy under a built name: %q", r.stderr)
	}

	// A failing command: its status and output, no image, nothing left.
	r := s.banger("image", "build", "--from", "tiny", "--run", "echo before; echo oops >&2; exit 3", "--run", "touch /never", "broken").want(t, 1)
	for _, w := range []string{"exited with 3", "oops", "before"} {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("a failed build's error has no %q:\n%s", w, r.stderr)
		}
	}
	if strings.Contains(r.stderr, "run 2 done") {
		t.Errorf("the build went on after a failed command:\n%s", r.stderr)
	}
	s.banger("image", "show", "broken").want(t, 4)
	noBuildLeftovers(t, s)

	// A recipe file: its relative paths are from its directory; a key
	// it does not know is refused before anything runs.
	recipe := filepath.Join(s.dir, "recipe.toml")
	os.WriteFile(recipe, []byte("from = \"tiny\"\ncopy = [\"app:/srv\"]\nrun = [\"cat /srv/sub/data > /from-file\"]\n"), 0o644)
	// The build VM's shape is the flags', not part of the recipe.
	s.banger("image", "build", "-q", "--file", recipe, "--cpus", "2", "--memory", "512M",
		"--run", "nproc > /cpus; grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2 > /mem", "fromfile").want(t, 0)
	got = s.banger("vm", "run", "--rm", "--image", "fromfile", "--", "sh", "-c", "cat /from-file /cpus /mem").want(t, 0).stdout
	lines := strings.Fields(got)
	if len(lines) != 3 || lines[0] != "data" || lines[1] != "2" || atoi(lines[2]) < 400<<10 {
		t.Errorf("the recipe file's build (data, the build VM's cpus, its memory in KiB): %q", got)
	}
	os.WriteFile(recipe, []byte("from = \"tiny\"\nrunn = [\"true\"]\n"), 0o644)
	if r := s.banger("image", "build", "--file", recipe, "typo").want(t, 2); !strings.Contains(r.stderr, "runn") {
		t.Errorf("an unknown recipe key: %q", r.stderr)
	}
	// Refused at once: no base, nothing to do on a base, two bases, a bad package name, a
	// relative guest path, a base that is not there.
	s.banger("image", "build", "nobase").want(t, 2)
	s.banger("image", "build", "--from", "tiny", "nothing").want(t, 2)
	s.banger("image", "build", "--from", "tiny", "--distro", "debian/bookworm", "two").want(t, 2)
	s.banger("image", "build", "--distro", "debian/bookworm", "--package", "bad;name", "pkg").want(t, 2)
	s.banger("image", "build", "--from", "tiny", "--copy", app+":opt", "rel").want(t, 2)
	s.banger("image", "build", "--from", "no-such-image", "--run", "true", "nofrom").want(t, 4)
	noBuildLeftovers(t, s)
}

// TestImageBuildDebian builds on a Debian suite: the package is in the
// mmdebstrap root (the base, deleted after), the copy and the command
// run in a VM of it, and a VM of the image has all three.
func TestImageBuildDebian(t *testing.T) {
	s := debianSandbox(t)
	s.daemon()
	_, conf := buildInputs(t, s.dir)
	r := s.banger("image", "build", "--distro", "debian/bookworm", "--package", "jq", "--copy", conf+":/etc/app.conf",
		"--run", "jq --version > /jq-version", "jqimg").want(t, 0)
	if !strings.Contains(r.stderr, "base done") || !strings.Contains(r.stderr, "run 1 done") {
		t.Errorf("the build's stages:\n%s", r.stderr)
	}
	got := s.banger("vm", "run", "--rm", "--image", "jqimg", "--", "sh", "-c", "cat /jq-version /etc/app.conf; jq -n 1+1").want(t, 0).stdout
	if !strings.HasPrefix(got, "jq-1.") || !strings.HasSuffix(got, "mode=test\n2\n") {
		t.Errorf("a VM of the Debian build sees %q; want jq's version, the copied file and jq working", got)
	}
	noBuildLeftovers(t, s)
}

// TestImageBuildDaemonKilled: a daemon killed (-9) while a build's
// command runs leaves a running build VM; the next daemon marks the
// build failed and deletes that VM, and no image is half made.
func TestImageBuildDaemonKilled(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	d := s.daemon()
	var op api.Operation
	if err := s.call(api.MethodImageBuildBegin, api.ImageBuild{Name: "never", Recipe: api.Recipe{From: api.TinyImage, Run: []string{"sleep 600"}}}, &op); err != nil {
		t.Fatal(err)
	}
	waitStage(t, s, op.ID, "run 1")
	var vms []api.VM
	s.banger("vm", "list", "--json").want(t, 0).json(t, &vms)
	if len(vms) != 1 || !strings.HasPrefix(vms[0].Name, "build-") || vms[0].State != "running" {
		t.Fatalf("VMs while the build runs: %+v", vms)
	}
	d.Process.Signal(syscall.SIGKILL)
	waitFor(t, 10*time.Second, func() bool { return syscall.Kill(d.Process.Pid, 0) != nil })

	s.daemon()
	var failed api.Operation
	if err := s.call(api.MethodOperationStatus, api.OperationID{ID: op.ID}, &failed); err != nil || failed.State != api.OpFailed {
		t.Errorf("the interrupted build: %+v %v", failed, err)
	}
	noBuildLeftovers(t, s)
	s.banger("image", "show", "never").want(t, 4)
	if pids := s.enginePIDs(); len(pids) != 0 {
		t.Errorf("engine processes after the restart: %v; the build's VM should be gone", pids)
	}
	if left, _ := os.ReadDir(filepath.Join(s.state, "banger", "images", ".tmp")); len(left) != 0 {
		t.Errorf("left in the image store's tmp: %d entries", len(left))
	}
}

// atoi is s as a number, 0 when it is none.
func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
