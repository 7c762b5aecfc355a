package kernel

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"banger/applets/agent/boot"
)

// readArchive reads a newc archive back: name -> header and contents.
func readArchive(t *testing.T, data []byte) (map[string]*cpio.Header, map[string][]byte, []string) {
	t.Helper()
	hdrs, files := map[string]*cpio.Header{}, map[string][]byte{}
	var order []string
	r := cpio.NewReader(bytes.NewReader(data))
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read archive: %v", err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		name := "/" + h.Name
		hdrs[name], files[name] = h, b
		order = append(order, name)
	}
	return hdrs, files, order
}

func before(t *testing.T, order []string, a, b string) {
	t.Helper()
	i, j := slices.Index(order, a), slices.Index(order, b)
	if i < 0 || j < 0 || i >= j {
		t.Errorf("%s (at %d) must load before %s (at %d): %v", a, i, b, j, order)
	}
}

// TestInitramfsFromHostModules builds the guest's initramfs from this
// host's kernel modules and reads it back.
func TestInitramfsFromHostModules(t *testing.T) {
	release, err := Release(hostKernel(t))
	if err != nil {
		t.Fatal(err)
	}
	modules := filepath.Join("/lib/modules", release)
	ix, err := ReadModuleIndex(modules)
	if err != nil {
		t.Skipf("no modules for %s: %v", release, err)
	}
	mods, err := ix.Resolve(GuestModules())
	if err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(t.TempDir(), "banger")
	os.WriteFile(agent, []byte("\x7fELF pretend agent"), 0o755)
	var buf bytes.Buffer
	m, err := BuildInitramfs(&buf, InitramfsSpec{Agent: agent, Modules: mods, ModulesDir: modules, Release: release})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("initramfs: %d bytes, %d modules", buf.Len(), len(m.Modules))
	hdrs, files, _ := readArchive(t, buf.Bytes())

	if h := hdrs[boot.Init]; h == nil || h.Mode.Perm() != 0o755 || !h.Mode.IsRegular() || string(files[boot.Init]) != "\x7fELF pretend agent" {
		t.Errorf("%s: %+v", boot.Init, h)
	}
	var got boot.Manifest
	if err := json.Unmarshal(files[boot.ManifestPath], &got); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	if got.Release != release || len(got.Modules) != len(m.Modules) {
		t.Errorf("manifest %+v", got)
	}
	var order []string
	for _, mod := range got.Modules {
		order = append(order, mod.Name)
		if !bytes.HasPrefix(files[mod.File], []byte("\x7fELF")) {
			t.Errorf("module %s: %s is not an ELF object", mod.Name, mod.File)
		}
		if !strings.HasPrefix(mod.File, boot.ModulesDir+"/") {
			t.Errorf("module file %s outside %s", mod.File, boot.ModulesDir)
		}
	}
	required, _ := GuestModules()
	for _, name := range required {
		if !ix.Builtin(name) && !slices.Contains(order, name) {
			t.Errorf("required module %s missing: %v", name, order)
		}
	}
	// Dependencies first, as modules.dep and modules.softdep say (for
	// the modules this kernel has as modules).
	for _, pair := range [][2]string{{"virtio", "virtio_mmio"}, {"virtio_ring", "virtio_blk"}, {"jbd2", "ext4"}, {"mbcache", "ext4"}, {"crc32c_generic", "ext4"}, {"evdev", "evdev"}} {
		if slices.Contains(order, pair[0]) && slices.Contains(order, pair[1]) && pair[0] != pair[1] {
			before(t, order, pair[0], pair[1])
		}
	}
	for _, mod := range got.Modules {
		if mod.Name == "ext4" && mod.Optional || mod.Name == "virtio_net" && !mod.Optional {
			t.Errorf("%s optional = %v", mod.Name, mod.Optional)
		}
	}

	// The same inputs give the same bytes.
	var again bytes.Buffer
	BuildInitramfs(&again, InitramfsSpec{Agent: agent, Modules: mods, ModulesDir: modules, Release: release})
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two builds differ")
	}
}

// fakeModules writes a modules directory as depmod would.
func fakeModules(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name, content string) {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("modules.dep", strings.Join([]string{
		"kernel/a/base.ko:",
		"kernel/a/mid.ko.xz: kernel/a/base.ko",
		"kernel/a/top-mod.ko.gz: kernel/a/mid.ko.xz kernel/a/base.ko",
		"kernel/c/crc-generic.ko.zst:",
		"kernel/c/crc-fast.ko:",
		"kernel/f/fs.ko: kernel/a/base.ko",
		"kernel/x/loop1.ko: kernel/x/loop2.ko",
		"kernel/x/loop2.ko: kernel/x/loop1.ko",
		"kernel/x/needs-missing.ko: kernel/x/gone.ko",
		"",
	}, "\n"))
	write("modules.builtin", "kernel/b/builtin_one.ko\n")
	write("modules.softdep", "# comment\nsoftdep fs pre: crypto-crc post: nothing\n")
	write("modules.alias", "alias crypto-crc crc_generic\nalias crypto-crc crc_fast\nalias crypto-* crc_fast\n")
	write("kernel/a/base.ko", "\x7fELF base")
	write("kernel/c/crc-fast.ko", "\x7fELF crc fast")
	write("kernel/f/fs.ko", "\x7fELF fs")
	write("kernel/x/loop1.ko", "x")
	write("kernel/x/loop2.ko", "x")
	write("kernel/x/needs-missing.ko", "x")

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("\x7fELF top"))
	zw.Close()
	write("kernel/a/top-mod.ko.gz", gz.String())
	var xzb bytes.Buffer
	xw, _ := xz.NewWriter(&xzb)
	xw.Write([]byte("\x7fELF mid"))
	xw.Close()
	write("kernel/a/mid.ko.xz", xzb.String())
	enc, _ := zstd.NewWriter(nil)
	write("kernel/c/crc-generic.ko.zst", string(enc.EncodeAll([]byte("\x7fELF crc generic"), nil)))
	return dir
}

func names(mods []Module) []string {
	var out []string
	for _, m := range mods {
		out = append(out, m.Name)
	}
	return out
}

func TestResolveModules(t *testing.T) {
	dir := fakeModules(t)
	ix, err := ReadModuleIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name               string
		required, optional []string
		want               []string
		err                error
	}{
		{"dependencies first", []string{"top-mod"}, nil, []string{"base", "mid", "top_mod"}, nil},
		{"each once", []string{"mid", "top_mod", "base"}, nil, []string{"base", "mid", "top_mod"}, nil},
		{"built in is skipped", []string{"builtin-one"}, nil, nil, nil},
		{"soft dependencies through aliases", []string{"fs"}, nil, []string{"crc_fast", "crc_generic", "base", "fs"}, nil},
		{"missing required", []string{"nope"}, nil, nil, ErrModuleNotFound},
		{"missing dependency", []string{"needs-missing"}, nil, nil, ErrModuleNotFound},
		{"missing optional is left out", []string{"base"}, []string{"nope", "needs_missing"}, []string{"base"}, nil},
		{"cycle", []string{"loop1"}, nil, nil, errors.New("cycle")},
	} {
		got, err := ix.Resolve(tc.required, tc.optional)
		switch {
		case tc.err == nil && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.err != nil && err == nil:
			t.Errorf("%s: no error, got %v", tc.name, names(got))
		case tc.err != nil && !errors.Is(err, tc.err) && !strings.Contains(err.Error(), tc.err.Error()):
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.err)
		case tc.err == nil && !slices.Equal(names(got), tc.want):
			t.Errorf("%s: %v, want %v", tc.name, names(got), tc.want)
		}
	}
	got, _ := ix.Resolve([]string{"fs"}, []string{"top_mod"})
	for _, m := range got {
		wantOptional := m.Name != "fs" && m.Name != "base"
		if m.Optional != wantOptional {
			t.Errorf("%s optional = %v", m.Name, m.Optional)
		}
	}
}

func TestInitramfsDecompressesModules(t *testing.T) {
	dir := fakeModules(t)
	ix, _ := ReadModuleIndex(dir)
	mods, err := ix.Resolve([]string{"top_mod", "fs"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(t.TempDir(), "agent")
	os.WriteFile(agent, []byte("agent"), 0o755)
	dst := filepath.Join(t.TempDir(), "initrd")
	if _, err := WriteInitramfs(dst, InitramfsSpec{Agent: agent, Modules: mods, ModulesDir: dir}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(dst)
	hdrs, files, order := readArchive(t, data)
	for name, want := range map[string]string{
		"/banger/modules/top_mod.ko":     "\x7fELF top",
		"/banger/modules/mid.ko":         "\x7fELF mid",
		"/banger/modules/crc_generic.ko": "\x7fELF crc generic",
		"/banger/modules/base.ko":        "\x7fELF base",
	} {
		if string(files[name]) != want {
			t.Errorf("%s = %q, want %q", name, files[name], want)
		}
	}
	// Directories come before what they hold.
	before(t, order, "/banger", "/banger/modules")
	before(t, order, "/banger/modules", "/banger/modules/base.ko")
	before(t, order, "/sbin", boot.Init)
	if !hdrs["/banger"].Mode.IsDir() {
		t.Error("/banger is not a directory")
	}

	// A missing module file is an error, not a hole in the archive.
	os.Remove(filepath.Join(dir, "kernel/a/base.ko"))
	if _, err := BuildInitramfs(io.Discard, InitramfsSpec{Agent: agent, Modules: mods, ModulesDir: dir}); err == nil {
		t.Error("missing module file: no error")
	}
	if _, err := BuildInitramfs(io.Discard, InitramfsSpec{Agent: "/nonexistent", ModulesDir: dir}); err == nil {
		t.Error("missing agent: no error")
	}
}
