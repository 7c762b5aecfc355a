package imagestore

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// tarEntry is one member of a test archive.
type tarEntry struct {
	name, link, body string
	typ              byte
	mode             int64
	uid, gid         int
}

// writeTar writes entries as a tar archive through wrap (a compressor, or
// nil for a plain tarball).
func writeTar(t testing.TB, path string, entries []tarEntry, wrap func(io.Writer) io.WriteCloser) string {
	t.Helper()
	var buf bytes.Buffer
	var w io.Writer = &buf
	var zw io.WriteCloser
	if wrap != nil {
		zw = wrap(&buf)
		w = zw
	}
	tw := tar.NewWriter(w)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Size: int64(len(e.body)), ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// rootTar is a small root filesystem as a tarball's members.
func rootTar() []tarEntry {
	return []tarEntry{
		{name: "./", typ: tar.TypeDir, mode: 0o755},
		{name: "./etc/", typ: tar.TypeDir, mode: 0o755},
		{name: "./etc/hello", typ: tar.TypeReg, mode: 0o644, body: "hello from the tarball\n"},
		{name: "./usr/lib/", typ: tar.TypeDir, mode: 0o755},
		{name: "./lib", typ: tar.TypeSymlink, link: "usr/lib", mode: 0o777},
		// Written through the in-tree /lib link, as a guest would see it.
		{name: "./lib/libx.so", typ: tar.TypeReg, mode: 0o644, body: "elf"},
		{name: "./usr/lib/libx.so.1", typ: tar.TypeLink, link: "./usr/lib/libx.so"},
		{name: "./home/user/", typ: tar.TypeDir, mode: 0o750, uid: 1000, gid: 1000},
		{name: "./home/user/.profile", typ: tar.TypeReg, mode: 0o600, uid: 1000, gid: 1000, body: "PS1=$"},
		{name: "./dev/null", typ: tar.TypeChar, mode: 0o666},
		{name: "./bin/su", typ: tar.TypeReg, mode: 0o4755, body: "su"},
	}
}

func TestImportTar(t *testing.T) {
	f := newFixture(t, Options{})
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		wrap func(io.Writer) io.WriteCloser
	}{
		{"plain", nil},
		{"gzip", func(w io.Writer) io.WriteCloser { return gzip.NewWriter(w) }},
		{"xz", func(w io.Writer) io.WriteCloser {
			zw, err := xz.NewWriter(w)
			if err != nil {
				t.Fatal(err)
			}
			return zw
		}},
		{"zstd", func(w io.Writer) io.WriteCloser {
			zw, err := zstd.NewWriter(w)
			if err != nil {
				t.Fatal(err)
			}
			return zw
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := f.spec("tar-" + tc.name)
			spec.RootfsTar = writeTar(t, filepath.Join(f.dir, tc.name+".tar"), rootTar(), tc.wrap)
			im, err := f.store.Import(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			img := im.RootfsPath
			checkAgent(t, img, f.agent)
			if got := catIn(t, img, "/etc/hello"); got != "hello from the tarball\n" {
				t.Fatalf("/etc/hello = %q", got)
			}
			if got := catIn(t, img, "/usr/lib/libx.so"); got != "elf" {
				t.Fatalf("/usr/lib/libx.so = %q (written through the /lib link?)", got)
			}
			if out := debugfsOut(t, img, "stat /usr/lib/libx.so.1"); !strings.Contains(out, "Links: 2") {
				t.Fatalf("hard link lost:\n%s", out)
			}
			if st := statIn(t, img, "/home/user/.profile"); st.uid != 1000 || st.gid != 1000 || st.perm != 0o600 {
				t.Fatalf(".profile: %+v; want 1000:1000 0600", st)
			}
			if st := statIn(t, img, "/home/user"); st.uid != 1000 || st.perm != 0o750 {
				t.Fatalf("/home/user: %+v; want 1000 0750", st)
			}
			if st := statIn(t, img, "/bin/su"); st.perm != 0o4755 || st.uid != 0 {
				t.Fatalf("/bin/su: %+v; want 4755 root", st)
			}
			if st := statIn(t, img, "/usr"); st.uid != 0 || st.perm != 0o755 {
				t.Fatalf("/usr (made on the way): %+v; want root 0755", st)
			}
			if len(im.Notes) == 0 || !strings.Contains(im.Notes[0], "device nodes (/dev/null)") {
				t.Fatalf("notes %q do not mention /dev/null", im.Notes)
			}
			fsckClean(t, img)
		})
	}
	if _, err := exec.LookPath("bzip2"); err == nil {
		t.Run("bzip2", func(t *testing.T) {
			plain := writeTar(t, filepath.Join(f.dir, "b.tar"), rootTar(), nil)
			if out, err := exec.Command("bzip2", "-k", plain).CombinedOutput(); err != nil {
				t.Fatalf("bzip2: %v %s", err, out)
			}
			spec := f.spec("tar-bzip2")
			spec.RootfsTar = plain + ".bz2"
			im, err := f.store.Import(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			if got := catIn(t, im.RootfsPath, "/etc/hello"); got != "hello from the tarball\n" {
				t.Fatalf("/etc/hello = %q", got)
			}
		})
	}
}

// TestImportHostileTar feeds archives built to write outside the tree.
// Each is refused, or contained: what it writes lands in the image, and
// the host's files stay as they were.
func TestImportHostileTar(t *testing.T) {
	f := newFixture(t, Options{})
	ctx := context.Background()
	// A host directory the archives aim at, by absolute and relative path.
	victim := filepath.Join(f.dir, "victim")
	os.MkdirAll(victim, 0o755)
	sentinel := filepath.Join(victim, "passwd")
	os.WriteFile(sentinel, []byte("host's own\n"), 0o644)
	rel, _ := filepath.Rel(f.store.path(tmpDir, "x", stagingDir), victim)
	hostileLink := strings.Repeat("../", 12) + strings.TrimPrefix(victim, "/")

	for _, tc := range []struct {
		name    string
		entries []tarEntry
		refused bool
		inImage map[string]string // path in the image → content
	}{
		{name: "dotdot member", refused: true, entries: []tarEntry{
			{name: "../../../../" + rel + "/passwd", typ: tar.TypeReg, mode: 0o644, body: "pwned"}}},
		{name: "dotdot in the middle", refused: true, entries: []tarEntry{
			{name: "etc/../../passwd", typ: tar.TypeReg, mode: 0o644, body: "pwned"}}},
		{name: "hard link out", refused: true, entries: []tarEntry{
			{name: "stolen", typ: tar.TypeLink, link: "../../../../../../etc/passwd"}}},
		{name: "absolute member", entries: []tarEntry{
			{name: sentinel, typ: tar.TypeReg, mode: 0o644, body: "pwned"}},
			inImage: map[string]string{sentinel: "pwned"}},
		{name: "absolute symlink then write", entries: []tarEntry{
			{name: "evil", typ: tar.TypeSymlink, link: victim},
			{name: "evil/passwd", typ: tar.TypeReg, mode: 0o644, body: "pwned"}},
			inImage: map[string]string{victim + "/passwd": "pwned"}},
		{name: "relative symlink out then write", entries: []tarEntry{
			{name: "a/b/evil", typ: tar.TypeSymlink, link: hostileLink},
			{name: "a/b/evil/passwd", typ: tar.TypeReg, mode: 0o644, body: "pwned"}},
			inImage: map[string]string{victim + "/passwd": "pwned"}},
		{name: "symlink to a file then overwrite", entries: []tarEntry{
			{name: "target", typ: tar.TypeSymlink, link: sentinel},
			{name: "target", typ: tar.TypeReg, mode: 0o644, body: "replaced"}},
			inImage: map[string]string{"/target": "replaced"}},
		{name: "symlink chain", entries: []tarEntry{
			{name: "l1", typ: tar.TypeSymlink, link: "l2"},
			{name: "l2", typ: tar.TypeSymlink, link: "../../.." + victim},
			{name: "l1/passwd", typ: tar.TypeReg, mode: 0o644, body: "pwned"}},
			inImage: map[string]string{victim + "/passwd": "pwned"}},
		{name: "hard link through a symlink", entries: []tarEntry{
			{name: "up", typ: tar.TypeSymlink, link: "/"},
			{name: "etc/", typ: tar.TypeDir, mode: 0o755},
			{name: "etc/shadow", typ: tar.TypeReg, mode: 0o600, body: "image's"},
			{name: "copy", typ: tar.TypeLink, link: "up/etc/shadow"}},
			inImage: map[string]string{"/copy": "image's"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.ReplaceAll(tc.name, " ", "-")
			spec := f.spec(name)
			spec.RootfsTar = writeTar(t, filepath.Join(f.dir, name+".tar"), tc.entries, nil)
			im, err := f.store.Import(ctx, spec)
			if tc.refused {
				wantCode(t, err, "invalid_params")
			} else if err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(sentinel); string(got) != "host's own\n" {
				t.Fatalf("the host's file was written: %q", got)
			}
			if entries, _ := os.ReadDir(victim); len(entries) != 1 {
				t.Fatalf("the host's directory was written: %v", entries)
			}
			for p, want := range tc.inImage {
				if got := catIn(t, im.RootfsPath, p); got != want {
					t.Fatalf("%s in the image = %q; want %q", p, got, want)
				}
			}
			if left := tmpEntries(t, f.store); len(left) != 0 {
				t.Fatalf("temporary files left: %v", left)
			}
		})
	}
}

func TestImportTarNotATar(t *testing.T) {
	f := newFixture(t, Options{})
	spec := f.spec("junk")
	spec.RootfsTar = writeRandom(t, filepath.Join(f.dir, "junk.tar.gz"), 10000)
	_, err := f.store.Import(context.Background(), spec)
	if err == nil {
		t.Fatal("a random file imported as a tarball")
	}
}

func TestMemberName(t *testing.T) {
	for in, want := range map[string]string{
		"./etc/passwd": "etc/passwd", "/etc/passwd": "etc/passwd", "etc//x/": "etc/x",
		"./": ".", "/": ".", "a/./b": "a/b",
	} {
		if got, err := memberName(in); err != nil || got != want {
			t.Errorf("memberName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"..", "../x", "a/../../x", "a/..", "/../etc"} {
		if _, err := memberName(in); err == nil {
			t.Errorf("memberName(%q) accepted", in)
		}
	}
}

// TestImportTarSparse checks that zeros stay holes from the archive to
// the image: a large file of zeros takes no blocks in the filesystem.
func TestImportTarSparse(t *testing.T) {
	f := newFixture(t, Options{})
	body := string(make([]byte, 16<<20)) + "end"
	spec := f.spec("sparse")
	spec.RootfsTar = writeTar(t, filepath.Join(f.dir, "sparse.tar.gz"), []tarEntry{
		{name: "zeros", typ: tar.TypeReg, mode: 0o644, body: body}},
		func(w io.Writer) io.WriteCloser { return gzip.NewWriter(w) })
	im, err := f.store.Import(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	out := debugfsOut(t, im.RootfsPath, "stat /zeros")
	if !strings.Contains(out, "Size: 16777219") || !strings.Contains(out, "Blockcount: 8\n") {
		t.Fatalf("/zeros is not 16 MiB + 3 bytes in one 4 KiB block:\n%s", out)
	}
	if got := catIn(t, im.RootfsPath, "/zeros"); got != body {
		t.Fatal("/zeros has the wrong content")
	}
	fsckClean(t, im.RootfsPath)
}

// A tar whose sparse file claims GiBs it does not hold (GNU tar's sparse
// format: a few KiB of tar) makes an image sized by its data.
func TestImportTarSparseIsSizedByItsData(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("needs GNU tar to write a sparse archive")
	}
	f := newFixture(t, Options{})
	src := filepath.Join(f.dir, "src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "huge"), nil, 0o644)
	if err := os.Truncate(filepath.Join(src, "huge"), 4<<30); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(f.dir, "sparse.tar")
	if out, err := exec.Command("tar", "--sparse", "-C", src, "-cf", archive, "huge").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v: %s", err, out)
	}
	if fi, _ := os.Stat(archive); fi.Size() > 64<<10 {
		t.Fatalf("the archive is %d bytes: not sparse", fi.Size())
	}
	spec := f.spec("sparse")
	spec.RootfsTar = archive
	im, err := f.store.Import(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if im.RootfsMiB > 2048 {
		t.Errorf("a 4 GiB hole made a %d MiB root file system", im.RootfsMiB)
	}
	if out := debugfsOut(t, im.RootfsPath, "stat /huge"); !strings.Contains(out, "Size: 4294967296") {
		t.Errorf("/huge lost its size:\n%s", out)
	}
}
