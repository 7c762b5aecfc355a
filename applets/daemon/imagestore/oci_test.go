package imagestore

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"banger/internal/ocitest"
)

// layeredImage is ocitest's layers, /bin a symlink to usr/bin.
func layeredImage(t *testing.T) v1.Image {
	return ocitest.Image(t, "amd64", ocitest.Layers(t, ocitest.Entry{Name: "bin", Type: tar.TypeSymlink, Link: "usr/bin", Mode: 0o777})...)
}

// wantLayered is the flattened tree of layeredImage, with what every
// import adds (the agent and the mount points), as listTree lists it.
const wantLayered = `/ 40755 0:0
/bin 120777 0:0
/data 40755 0:0
/data/z 100644 0:0
/dev 40755 0:0
/etc 40755 0:0
/etc/hello 100644 0:0
/home 40755 0:0
/home/user 40750 1000:1000
/home/user/.profile 100600 1000:1000
/home/user/notes 100640 1000:1001
/opt 40755 0:0
/proc 40555 0:0
/root 40700 0:0
/run 40755 0:0
/sbin 40755 0:0
/sbin/banger-agent 100755 0:0
/sys 40555 0:0
/tmp 41777 0:0
/usr 40755 0:0
/usr/bin 40755 0:0
/usr/bin/ping 100755 0:0
/usr/bin/sh 120777 0:0
/usr/bin/su 104755 0:0
/usr/bin/su-link 104755 0:0
/usr/bin/tool 100755 0:0
/usr/bin/tool-link 100755 0:0
/var 40755 0:0
`

// listTree lists an ext4 image's tree with debugfs: each path with its
// octal mode and owner, sorted; lost+found left out (mkfs makes it).
func listTree(t *testing.T, img string) string {
	t.Helper()
	var lines []string
	var walk func(dir string)
	walk = func(dir string) {
		for _, line := range strings.Split(debugfsOut(t, img, "ls -p "+debugfsQuote(dir)), "\n") {
			// /INODE/MODE/UID/GID/NAME/SIZE/
			f := strings.Split(line, "/")
			if len(f) < 7 || f[5] == "." || f[5] == ".." || f[5] == "lost+found" && dir == "/" {
				continue
			}
			p := strings.TrimSuffix(dir, "/") + "/" + f[5]
			lines = append(lines, p+" "+strings.TrimLeft(f[2], "0")+" "+f[3]+":"+f[4])
			if strings.HasPrefix(f[2], "04") {
				walk(p)
			}
		}
	}
	st := statIn(t, img, "/")
	lines = append(lines, fmt.Sprintf("/ 40%o %d:%d", st.perm, st.uid, st.gid))
	walk("/")
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

// checkLayered checks an import of layeredImage: the exact tree, the
// contents the layers left, hard links, kept times, the config, and the
// file capability.
func checkLayered(t *testing.T, im Image) {
	t.Helper()
	img := im.RootfsPath
	if got := listTree(t, img); got != wantLayered {
		t.Fatalf("tree:\n%s\nwant:\n%s", got, wantLayered)
	}
	for p, want := range map[string]string{"/etc/hello": "top\n", "/data/z": "z", "/usr/bin/su-link": "su", "/home/user/notes": "n"} {
		if got := catIn(t, img, p); got != want {
			t.Errorf("%s = %q; want %q", p, got, want)
		}
	}
	for _, p := range []string{"/usr/bin/su", "/usr/bin/tool"} {
		if out := debugfsOut(t, img, "stat "+p); !strings.Contains(out, "Links: 2") {
			t.Errorf("hard link to %s lost:\n%s", p, out)
		}
	}
	for _, p := range []string{"/etc/hello", "/home/user", "/usr/bin"} {
		if out := debugfsOut(t, img, "stat "+p); !strings.Contains(out, "mtime: 0x6553f100") {
			t.Errorf("modification time of %s not kept:\n%s", p, out)
		}
	}
	if out := debugfsOut(t, img, "stat /bin"); !strings.Contains(out, `Fast link dest: "usr/bin"`) {
		t.Errorf("symlink /bin:\n%s", out)
	}
	o := im.OCI
	if o == nil || !strings.HasPrefix(o.Digest, "sha256:") || o.WorkingDir != "/home/user" || o.User != "1000:1000" ||
		strings.Join(o.Env, " ") != "PATH=/usr/bin:/bin GREETING=hi" || strings.Join(o.Entrypoint, " ") != "/usr/bin/tool" || strings.Join(o.Cmd, " ") != "--help" {
		t.Errorf("OCI config in the manifest: %+v", o)
	}
	if im.Rootfs.From.Kind != OriginOCI || im.Rootfs.From.Path != o.Reference {
		t.Errorf("rootfs origin %+v, reference %s", im.Rootfs.From, o.Reference)
	}
	if out := debugfsOut(t, img, "ea_list /usr/bin/ping"); !strings.Contains(out, "security.capability (20) = 01 00 00 02 00 20 00 00") {
		t.Errorf("the file capability of /usr/bin/ping is not kept:\n%s", out)
	}
	if len(im.Notes) != 0 {
		t.Errorf("notes %q; want none", im.Notes)
	}
	fsckClean(t, img)
}

// writeLayout writes img to an OCI layout, tagged tag.
func writeLayout(t *testing.T, dir string, img v1.Image, tag string) string {
	t.Helper()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{refNameAnnotation: tag})); err != nil {
		t.Fatal(err)
	}
	return dir
}

// tarDir writes the tree of dir as a tar file: an oci-archive of a layout.
func tarDir(t *testing.T, dir, file string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.AddFS(os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

func TestImportOCI(t *testing.T) {
	f := newFixture(t, Options{})
	ctx := context.Background()
	img := layeredImage(t)
	host := ocitest.Registry(t)
	ocitest.Push(t, host+"/test/layered:v1", img)
	ocitest.PushIndex(t, host+"/test/multi:v1", map[string]v1.Image{"arm64": ocitest.Image(t, "arm64"), "amd64": img})
	lay := writeLayout(t, filepath.Join(f.dir, "layout"), img, "v1")
	archive := filepath.Join(f.dir, "docker.tar")
	tag, _ := name.NewTag("test/layered:v1")
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}
	ociArchive := tarDir(t, lay, filepath.Join(f.dir, "oci.tar"))
	digest, _ := img.Digest()
	var size int64
	layers, _ := img.Layers()
	for _, l := range layers {
		n, _ := l.Size()
		size += n
	}

	type source struct {
		name, ref string
		// rewritten: a tool wrote the image anew (its manifest, and
		// maybe its layers' compression, are its own), so its digest and
		// sizes are not ggcr's.
		rewritten bool
	}
	sources := []source{
		{"registry", "docker://" + host + "/test/layered:v1", false},
		{"registry-digest", "docker://" + host + "/test/layered@" + digest.String(), false},
		{"registry-index", "docker://" + host + "/test/multi:v1", false},
		{"layout", "oci:" + lay, false},
		{"layout-tag", "oci:" + lay + ":v1", false},
		{"docker-archive", "docker-archive:" + archive, false},
		{"oci-archive", "oci-archive:" + ociArchive, false},
	}
	// What docker save and podman save write, by a real tool, when the
	// host has it (packaging/test.sh installs skopeo).
	if _, err := exec.LookPath("skopeo"); err == nil {
		for _, dst := range []struct{ name, ref string }{
			{"skopeo-docker-archive", "docker-archive:" + filepath.Join(f.dir, "skopeo.tar") + ":test/layered:v1"},
			{"skopeo-oci", "oci:" + filepath.Join(f.dir, "skopeo-layout") + ":v1"},
			{"skopeo-oci-archive", "oci-archive:" + filepath.Join(f.dir, "skopeo-oci.tar") + ":v1"},
		} {
			if out, err := exec.Command("skopeo", "copy", "--src-tls-verify=false", "docker://"+host+"/test/layered:v1", dst.ref).CombinedOutput(); err != nil {
				t.Fatalf("skopeo copy to %s: %v\n%s", dst.ref, err, out)
			}
			sources = append(sources, source{dst.name, dst.ref, true})
		}
	} else {
		t.Log("no skopeo: the docker archive is ggcr's only (Debian package skopeo)")
	}
	for _, tc := range sources {
		t.Run(tc.name, func(t *testing.T) {
			spec := f.spec("oci-" + tc.name)
			spec.SizeMiB = 0
			spec.OCI = tc.ref
			var done, total int64
			spec.Progress = func(d, tot int64) { done, total = d, tot }
			im, err := f.store.Import(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			checkLayered(t, im)
			if done != total || total == 0 {
				t.Errorf("progress ended at %d of %d bytes", done, total)
			}
			if !tc.rewritten && (im.OCI.Digest != digest.String() || total != size) {
				t.Errorf("digest %s, %d bytes; want the amd64 image's %s, %d", im.OCI.Digest, total, digest, size)
			}
			if left := tmpEntries(t, f.store); len(left) != 0 {
				t.Errorf("left in the store's tmp: %v", left)
			}
		})
	}
}

func TestImportOCINoAMD64(t *testing.T) {
	f := newFixture(t, Options{})
	host := ocitest.Registry(t)
	arm := ocitest.Image(t, "arm64")
	ocitest.PushIndex(t, host+"/test/arm:v1", map[string]v1.Image{"arm64": arm})
	ocitest.Push(t, host+"/test/arm-only:v1", arm)
	for _, ref := range []string{"docker://" + host + "/test/arm:v1", "docker://" + host + "/test/arm-only:v1",
		"oci:" + writeLayout(t, filepath.Join(f.dir, "arm"), arm, "")} {
		spec := f.spec("arm")
		spec.OCI = ref
		_, err := f.store.Import(context.Background(), spec)
		wantCode(t, err, "invalid_params")
		if !strings.Contains(err.Error(), "no linux/amd64 image (it has linux/arm64); banger's guests are amd64 only") {
			t.Errorf("%s: %v; want it to say there is no amd64 image, only arm64", ref, err)
		}
	}
}

func TestImportOCIBadRefs(t *testing.T) {
	f := newFixture(t, Options{})
	host := ocitest.Registry(t)
	for ref, code := range map[string]string{
		"alpine:latest":                       "invalid_params",
		"dir:/tmp":                            "invalid_params",
		"oci:" + filepath.Join(f.dir, "none"): "not_found",
		"docker-archive:" + f.dir:             "invalid_params", // a directory
		"docker://" + host + "/no/such:v1":    "not_found",
		"oci:" + f.dir:                        "invalid_params", // no layout
	} {
		spec := f.spec("bad")
		spec.OCI = ref
		_, err := f.store.Import(context.Background(), spec)
		if err == nil {
			t.Errorf("%s imported", ref)
			continue
		}
		wantCode(t, err, code)
	}
}

// TestImportHostileOCI feeds layers that try to leave the tree or are
// damaged: each import fails with a clear error, leaves nothing in the
// store or outside it, and the store keeps the image it had.
func TestImportHostileOCI(t *testing.T) {
	f := newFixture(t, Options{})
	ctx := context.Background()
	outside := filepath.Join(f.dir, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	keep := f.spec("keep")
	keep.RootfsTar = writeTar(t, filepath.Join(f.dir, "keep.tar"), rootTar(), nil)
	if _, err := f.store.Import(ctx, keep); err != nil {
		t.Fatal(err)
	}
	const reg = tar.TypeReg
	good := ocitest.Layer(t, []ocitest.Entry{{Name: "etc/hello", Type: reg, Mode: 0o644, Body: strings.Repeat("hello ", 1000)}})

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	tw := tar.NewWriter(zw)
	body := bytes.Repeat([]byte("a file that never ends "), 4000)
	tw.WriteHeader(&tar.Header{Name: "big", Typeflag: reg, Mode: 0o644, Size: int64(len(body))})
	tw.Write(body)
	tw.Close()
	zw.Close()
	truncated := static.NewLayer(gz.Bytes()[:gz.Len()/2], types.OCILayer) // its digest is of the truncated bytes

	layoutWith := func(name string, img v1.Image) string {
		return writeLayout(t, filepath.Join(f.dir, name), img, "")
	}
	corrupt := layoutWith("corrupt", ocitest.Image(t, "amd64", good))
	short := layoutWith("short", ocitest.Image(t, "amd64", good))
	gd, _ := good.Digest()
	blob := func(dir string) string { return filepath.Join(dir, "blobs", "sha256", gd.Hex) }
	data, err := os.ReadFile(blob(corrupt))
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	os.Chmod(blob(corrupt), 0o644)
	os.WriteFile(blob(corrupt), data, 0o644)
	os.Chmod(blob(short), 0o644)
	os.WriteFile(blob(short), data[:len(data)/2], 0o644)
	td, _ := truncated.Digest()

	for _, tc := range []struct {
		name, ref string
		want      []string
	}{
		{"traversal", "oci:" + layoutWith("traversal", ocitest.Image(t, "amd64",
			ocitest.Layer(t, []ocitest.Entry{{Name: "../../outside/escaped", Type: reg, Mode: 0o644, Body: "x"}}))),
			[]string{"unsafe tar path", "../../outside/escaped"}},
		{"symlink-then-write", "oci:" + layoutWith("symlink", ocitest.Image(t, "amd64",
			ocitest.Layer(t, []ocitest.Entry{{Name: "evil", Type: tar.TypeSymlink, Link: outside, Mode: 0o777}}),
			ocitest.Layer(t, []ocitest.Entry{{Name: "evil/pwned", Type: reg, Mode: 0o644, Body: "x"}}))),
			[]string{"/evil is a directory"}},
		{"truncated-gzip", "oci:" + layoutWith("truncated", ocitest.Image(t, "amd64", truncated)),
			[]string{"layer " + td.String(), "unexpected EOF"}},
		{"wrong-digest", "oci:" + corrupt, []string{"layer " + gd.String() + " is corrupt"}},
		{"not-a-tar", "oci:" + layoutWith("nottar", ocitest.Image(t, "amd64", static.NewLayer([]byte(strings.Repeat("not a tar header ", 100)), types.OCIUncompressedLayer))),
			[]string{"invalid tar header", "(in layer sha256:"}},
		{"truncated-blob", "oci:" + short, []string{"layer " + gd.String() + " is corrupt or truncated"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := f.spec("hostile-" + tc.name)
			spec.OCI = tc.ref
			_, err := f.store.Import(ctx, spec)
			if err == nil {
				t.Fatal("imported")
			}
			t.Logf("refused: %v", err)
			wantCode(t, err, "invalid_params")
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if left := tmpEntries(t, f.store); len(left) != 0 {
				t.Errorf("left in the store's tmp: %v", left)
			}
			if _, err := os.Lstat(f.store.path(spec.Name)); err == nil {
				t.Errorf("image %s exists", spec.Name)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("written outside the tree: %v", ents)
			}
			ims, err := f.store.List(ctx)
			if err != nil || len(ims) != 1 || ims[0].Name != "keep" || ims[0].Problem != "" {
				t.Fatalf("store after the import: %+v, %v", ims, err)
			}
			if err := f.store.Verify(ctx, "keep"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestImportOCISymlinkInLayer: a layer that makes a symlink out of the
// tree and then writes through it is contained: mutate.Extract drops the
// write (the symlink hides what is under its name), the symlink stays as
// data, and nothing is written outside.
func TestImportOCISymlinkInLayer(t *testing.T) {
	f := newFixture(t, Options{})
	outside := filepath.Join(f.dir, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	img := ocitest.Image(t, "amd64", ocitest.Layer(t, []ocitest.Entry{
		{Name: "evil", Type: tar.TypeSymlink, Link: outside, Mode: 0o777},
		{Name: "evil/pwned", Type: tar.TypeReg, Mode: 0o644, Body: "x"},
	}))
	spec := f.spec("symlink")
	spec.OCI = "oci:" + writeLayout(t, filepath.Join(f.dir, "layout"), img, "")
	im, err := f.store.Import(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if st := statIn(t, im.RootfsPath, "/evil"); st.typ != "symlink" {
		t.Errorf("/evil is %+v; want the symlink", st)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("written outside the tree: %v", ents)
	}
	if strings.Contains(listTree(t, im.RootfsPath), "pwned") {
		t.Errorf("the write through the symlink landed in the image")
	}
}

// TestImportXattrs: attributes in the Linux namespaces are kept; one in
// no namespace, or too large for ext4, is left out with a note.
func TestImportXattrs(t *testing.T) {
	f := newFixture(t, Options{})
	img := ocitest.Image(t, "amd64", ocitest.Layer(t, []ocitest.Entry{
		{Name: "d/", Type: tar.TypeDir, Mode: 0o755, PAX: map[string]string{"SCHILY.xattr.user.dir": "on a dir"}},
		{Name: "d/f", Type: tar.TypeReg, Mode: 0o644, Body: "f", PAX: map[string]string{
			"SCHILY.xattr.user.note": "hi", "SCHILY.xattr.trusted.t": "t",
			"SCHILY.xattr.bogus": "x", "SCHILY.xattr.user.big": strings.Repeat("b", 4<<10)}},
	}))
	spec := f.spec("xattrs")
	spec.OCI = "oci:" + writeLayout(t, filepath.Join(f.dir, "layout"), img, "")
	im, err := f.store.Import(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	out := debugfsOut(t, im.RootfsPath, "ea_list /d/f")
	for _, w := range []string{"user.note (2) = \"hi\"", "trusted.t (1) = \"t\""} {
		if !strings.Contains(out, w) {
			t.Errorf("ea_list /d/f lacks %s:\n%s", w, out)
		}
	}
	if strings.Contains(out, "bogus") || strings.Contains(out, "user.big") {
		t.Errorf("ea_list /d/f has what was to be left out:\n%s", out)
	}
	if out := debugfsOut(t, im.RootfsPath, "ea_list /d"); !strings.Contains(out, "user.dir") {
		t.Errorf("ea_list /d:\n%s", out)
	}
	notes := strings.Join(im.Notes, "\n")
	for _, w := range []string{"left out extended attributes debugfs cannot name (/d/f)", "left out extended attributes too large for ext4 (/d/f)"} {
		if !strings.Contains(notes, w) {
			t.Errorf("notes %q lack %q", im.Notes, w)
		}
	}
	if left := tmpEntries(t, f.store); len(left) != 0 {
		t.Errorf("left in the store's tmp: %v", left)
	}
}

// TestImportOCIAuth reads a registry that wants credentials: refused
// without them (saying where they go), read with those of a docker
// config.json or of $REGISTRY_AUTH_FILE.
func TestImportOCIAuth(t *testing.T) {
	f := newFixture(t, Options{})
	host := ocitest.AuthRegistry(t, "banger", "s3cret")
	ocitest.Push(t, host+"/private/img:v1", layeredImage(t), remote.WithAuth(&authn.Basic{Username: "banger", Password: "s3cret"}))
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("DOCKER_CONFIG", "")
	t.Setenv("REGISTRY_AUTH_FILE", "")
	t.Setenv("XDG_RUNTIME_DIR", "")
	t.Setenv("XDG_CONFIG_HOME", home)
	auth := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, host, base64.StdEncoding.EncodeToString([]byte("banger:s3cret")))
	write := func(file string) string {
		os.MkdirAll(filepath.Dir(file), 0o700)
		if err := os.WriteFile(file, []byte(auth), 0o600); err != nil {
			t.Fatal(err)
		}
		return file
	}
	importAs := func(name string) (Image, error) {
		spec := f.spec(name)
		spec.SizeMiB = 0
		spec.OCI = "docker://" + host + "/private/img:v1"
		return f.store.Import(context.Background(), spec)
	}

	_, err := importAs("anonymous")
	wantCode(t, err, "invalid_params")
	if !strings.Contains(err.Error(), "REGISTRY_AUTH_FILE") {
		t.Errorf("refusal %q does not say where credentials go", err)
	}
	t.Setenv("REGISTRY_AUTH_FILE", write(filepath.Join(home, "auth.json")))
	if _, err := importAs("podman-auth"); err != nil {
		t.Fatalf("with $REGISTRY_AUTH_FILE: %v", err)
	}
	t.Setenv("REGISTRY_AUTH_FILE", "")
	write(filepath.Join(home, ".docker", "config.json"))
	im, err := importAs("docker-config")
	if err != nil {
		t.Fatalf("with ~/.docker/config.json: %v", err)
	}
	checkLayered(t, im)
}

// TestImportOCICancel cancels an import while a layer downloads (what
// Ctrl-C on image import does, through its operation): the import ends
// with the cancel, and leaves nothing in the store.
func TestImportOCICancel(t *testing.T) {
	f := newFixture(t, Options{})
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stalled := make(chan struct{}, 1)
	big := ocitest.Layer(t, []ocitest.Entry{{Name: "big", Type: tar.TypeReg, Mode: 0o644, Body: string(bytes.Repeat([]byte("x"), 1<<20))}})
	bigDigest, err := big.Digest()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+bigDigest.String()) {
			// Half the layer, then nothing until the client gives up.
			rec := httptest.NewRecorder()
			reg.ServeHTTP(rec, r)
			body := rec.Body.Bytes()
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.WriteHeader(http.StatusOK)
			w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			select {
			case stalled <- struct{}{}:
			default:
			}
			<-r.Context().Done()
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ocitest.Push(t, host+"/slow/img:v1", ocitest.Image(t, "amd64", big))

	go func() {
		<-stalled
		cancel()
	}()
	spec := f.spec("cancelled")
	spec.OCI = "docker://" + host + "/slow/img:v1"
	done := make(chan error, 1)
	go func() { _, err := f.store.Import(ctx, spec); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("a cancelled import returned %v; want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the import did not end within 30 s of its cancel")
	}
	if left := tmpEntries(t, f.store); len(left) != 0 {
		t.Errorf("left in the store's tmp: %v", left)
	}
	if ims, err := f.store.List(context.Background()); err != nil || len(ims) != 0 {
		t.Errorf("store after the cancel: %+v, %v", ims, err)
	}
}
