package e2e_test

import (
	"archive/tar"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"banger/internal/ocitest"
)

// userImage is busybox with a user of its own, app (1000, home
// /home/app), as its config's User, and an entrypoint script with a
// default argument as its Entrypoint and Cmd.
func userImage(t *testing.T) v1.Image {
	t.Helper()
	busybox := hostBusybox(t)
	const dir, reg = tar.TypeDir, tar.TypeReg
	config := v1.Config{Env: []string{"PATH=/usr/bin:/bin"}, User: "app", Entrypoint: []string{"/usr/bin/greet"}, Cmd: []string{"world"}}
	return ocitest.ImageWith(t, "amd64", config, ocitest.Layer(t, []ocitest.Entry{
		{Name: "bin/", Type: dir, Mode: 0o755},
		{Name: "bin/busybox", Type: reg, Mode: 0o755, Body: string(busybox)},
		{Name: "bin/sh", Type: tar.TypeSymlink, Link: "busybox", Mode: 0o777},
		{Name: "etc/", Type: dir, Mode: 0o755},
		{Name: "etc/passwd", Type: reg, Mode: 0o644, Body: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n"},
		{Name: "etc/group", Type: reg, Mode: 0o644, Body: "root:x:0:\napp:x:1000:\nstaff:x:50:app\n"},
		{Name: "home/", Type: dir, Mode: 0o755},
		{Name: "home/app/", Type: dir, Mode: 0o700, UID: 1000, GID: 1000},
		{Name: "usr/", Type: dir, Mode: 0o755},
		{Name: "usr/bin/", Type: dir, Mode: 0o755},
		{Name: "usr/bin/greet", Type: reg, Mode: 0o755, Body: "#!/bin/sh\necho hello \"$@\"\n/bin/busybox id -u\n/bin/busybox pwd\n"},
	}))
}

// TestImageUserAndEntrypoint: an OCI image's User runs its VMs'
// commands (in its home, with its groups) unless --user says another;
// `vm run` without a command runs its Entrypoint and Cmd, and a command
// replaces both; the workspace goes to the user's home, theirs.
func TestImageUserAndEntrypoint(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	ref := ocitest.Registry(t) + "/e2e/users:v1"
	ocitest.Push(t, ref, userImage(t))
	s.banger("image", "import", "-q", "--oci", "docker://"+ref, "users").want(t, 0)

	if got := s.banger("vm", "run", "--rm", "-q", "--image", "users").want(t, 0).stdout; got != "hello world\n1000\n/home/app\n" {
		t.Errorf("vm run without a command: %q; want the entrypoint and cmd, as app, in its home", got)
	}
	s.banger("vm", "create", "--name", "u", "--image", "users").want(t, 0)
	defer s.banger("vm", "delete", "u")
	id := []string{"--", "/bin/busybox", "id"}
	if got := s.banger(append([]string{"vm", "exec", "u"}, id...)...).want(t, 0).stdout; got != "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)\n" {
		t.Errorf("vm exec: %q; want the image's user with its groups (the kernel sorts them)", got)
	}
	if got := s.banger(append([]string{"vm", "exec", "--user", "root", "u"}, id...)...).want(t, 0).stdout; !strings.HasPrefix(got, "uid=0(root)") {
		t.Errorf("vm exec --user root: %q", got)
	}
	if got := s.banger(append([]string{"vm", "exec", "--user", "4242:50", "u"}, id...)...).want(t, 0).stdout; !strings.HasPrefix(got, "uid=4242 gid=50(staff)") {
		t.Errorf("vm exec --user 4242:50: %q", got)
	}
	if r := s.banger(append([]string{"vm", "exec", "--user", "nobody", "u"}, id...)...).want(t, 2); !strings.Contains(r.stderr, "nobody") {
		t.Errorf("an unknown user: %q", r.stderr)
	}

	// The workspace is the user's, in their home.
	repo := filepath.Join(s.dir, "repo")
	os.MkdirAll(repo, 0o755)
	os.WriteFile(filepath.Join(repo, "file"), []byte("x"), 0o644)
	got := s.banger("vm", "run", "--rm", "-q", "--image", "users", repo, "--", "/bin/busybox", "sh", "-c",
		"/bin/busybox pwd; /bin/busybox stat -c %u:%g file .; echo y > new && /bin/busybox cat new").want(t, 0).stdout
	if got != "/home/app/repo\n1000:1000\n1000:1000\ny\n" {
		t.Errorf("a workspace in an image with a user: %q; want it in app's home, app's, writable", got)
	}
	if got := s.banger("vm", "run", "--rm", "-q", "--image", "users", "--user", "root", repo, "--", "/bin/busybox", "sh", "-c", "/bin/busybox pwd; /bin/busybox stat -c %u file").want(t, 0).stdout; got != "/root/repo\n0\n" {
		t.Errorf("a workspace with --user root: %q", got)
	}
}
