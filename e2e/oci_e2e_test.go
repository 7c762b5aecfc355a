package e2e_test

import (
	"archive/tar"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"banger/internal/api"
	"banger/internal/ocitest"
)

// hostBusybox is the host's busybox binary, for images of it; a host
// without one skips the test.
func hostBusybox(t *testing.T) []byte {
	t.Helper()
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip(err)
	}
	return busybox
}

// busyboxImage is ocitest's layers around the host's busybox.
func busyboxImage(t *testing.T) v1.Image {
	t.Helper()
	busybox := hostBusybox(t)
	return ocitest.Image(t, "amd64", ocitest.Layers(t,
		ocitest.Entry{Name: "bin/", Type: tar.TypeDir, Mode: 0o755},
		ocitest.Entry{Name: "bin/busybox", Type: tar.TypeReg, Mode: 0o755, Body: string(busybox)})...)
}

// wantGuestTree is what the guest lists of busyboxImage's tree.
const wantGuestTree = `/data drwxr-xr-x 0:0 2
/data/z -rw-r--r-- 0:0 1
/etc/hello -rw-r--r-- 0:0 1
/home drwxr-xr-x 0:0 3
/home/user drwxr-x--- 1000:1000 2
/home/user/.profile -rw------- 1000:1000 1
/home/user/notes -rw-r----- 1000:1001 1
/opt drwxr-xr-x 0:0 2
/usr drwxr-xr-x 0:0 3
/usr/bin drwxr-xr-x 0:0 2
/usr/bin/ping -rwxr-xr-x 0:0 1
/usr/bin/sh lrwxrwxrwx 0:0 1
/usr/bin/su -rwsr-xr-x 0:0 2
/usr/bin/su-link -rwsr-xr-x 0:0 2
/usr/bin/tool -rwxr-xr-x 0:0 2
/usr/bin/tool-link -rwxr-xr-x 0:0 2
/var drwxr-xr-x 0:0 2
top
`

// TestImageImportOCI imports an image from a registry with --oci alone
// (banger's default kernel) and boots it: the guest sees exactly the
// flattened tree, with its owners and modes.
func TestImageImportOCI(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	ref := ocitest.Registry(t) + "/e2e/busybox:v1"
	ocitest.Push(t, ref, busyboxImage(t))

	if r := s.banger("image", "import", "--oci", "busybox:latest", "bad").want(t, 2); !strings.Contains(r.stderr, "oci-archive:FILE") {
		t.Errorf("a reference without a transport: %q; want the transports named", r.stderr)
	}
	// Refused at once, before an operation begins (none is shown).
	if r := s.banger("image", "import", "--oci", "oci:"+filepath.Join(s.dir, "none"), "none").want(t, 4); strings.Contains(r.stderr, "image.import none") {
		t.Errorf("a missing layout began an operation: %q", r.stderr)
	}
	imported := s.banger("image", "import", "--oci", "docker://"+ref, "oci").want(t, 0)
	// The operation's stage, not a terminal: one line when it is done,
	// with the bytes of the layers read.
	if !regexp.MustCompile(`import done in .*: [0-9.]+ [KM]iB of [0-9.]+ [KM]iB`).MatchString(imported.stderr) {
		t.Errorf("no progress in bytes on the import's stage line: %q", imported.stderr)
	}
	var im api.Image
	s.banger("image", "show", "--json", "oci").want(t, 0).json(t, &im)
	if im.OCI == nil || im.OCI.WorkingDir != "/home/user" || strings.Join(im.OCI.Env, " ") != "PATH=/usr/bin:/bin GREETING=hi" {
		t.Errorf("imported: %+v", im.OCI)
	}
	show := s.banger("image", "show", "oci").want(t, 0).stdout
	for _, w := range []string{"oci image:", "docker://" + ref, "oci env:", "GREETING=hi", "oci workdir:", "/home/user"} {
		if !strings.Contains(show, w) {
			t.Errorf("image show does not say %q:\n%s", w, show)
		}
	}

	out := s.banger("vm", "run", "--rm", "--image", "oci", "--", "/bin/busybox", "sh", "-c",
		"/bin/busybox find /data /etc/hello /home /opt /usr /var -exec /bin/busybox stat -c '%n %A %u:%g %h' {} + && /bin/busybox cat /etc/hello").want(t, 0).stdout
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := lines[len(lines)-1]
	lines = lines[:len(lines)-1]
	sort.Strings(lines)
	if got := strings.Join(append(lines, last), "\n") + "\n"; got != wantGuestTree {
		t.Errorf("the guest sees:\n%s\nwant:\n%s", got, wantGuestTree)
	}

	// The image's Env and WorkingDir are vm exec's defaults; --workdir
	// still wins.
	s.banger("vm", "create", "--name", "ocivm", "--image", "oci").want(t, 0)
	defer s.banger("vm", "delete", "ocivm")
	sh := []string{"--", "/bin/busybox", "sh", "-c", "/bin/busybox pwd; echo $GREETING $PATH"}
	if got := s.banger(append([]string{"vm", "exec", "ocivm"}, sh...)...).want(t, 0).stdout; got != "/home/user\nhi /usr/bin:/bin\n" {
		t.Errorf("vm exec in a VM of the image: %q; want its WorkingDir, then its Env", got)
	}
	if got := s.banger(append([]string{"vm", "exec", "--workdir", "/etc", "ocivm"}, sh...)...).want(t, 0).stdout; !strings.HasPrefix(got, "/etc\n") {
		t.Errorf("vm exec --workdir /etc: %q", got)
	}
}
