package imagestore

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// makeTree writes a small root filesystem tree: nested directories,
// files with odd modes and owners, symlinks (one absolute, one to a
// directory), a hard link, and a fifo.
func makeTree(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"etc", "usr/bin", "usr/sbin", "var/lib/app", "home/u"} {
		must(os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	must(os.WriteFile(filepath.Join(dir, "etc/hello"), []byte("hello from the image\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "etc/shadow"), []byte("root:*:1::::::\n"), 0o644))
	must(os.Chmod(filepath.Join(dir, "etc/shadow"), 0)) // Fedora's: unreadable even by its owner
	must(os.WriteFile(filepath.Join(dir, "usr/bin/tool"), []byte("#!/bin/sh\necho tool\n"), 0o755))
	must(os.Chmod(filepath.Join(dir, "usr/bin/tool"), 0o4755|os.ModeSetuid))
	must(os.Link(filepath.Join(dir, "usr/bin/tool"), filepath.Join(dir, "usr/bin/tool2")))
	must(os.Symlink("usr/sbin", filepath.Join(dir, "sbin"))) // merged /usr
	must(os.Symlink("/etc/hello", filepath.Join(dir, "hello-link")))
	must(os.WriteFile(filepath.Join(dir, "home/u/notes"), []byte("mine"), 0o600))
	must(syscall.Mkfifo(filepath.Join(dir, "var/lib/app/fifo"), 0o644))
	if os.Geteuid() == 0 {
		must(os.Lchown(filepath.Join(dir, "home/u"), 1234, 1235))
		must(os.Lchown(filepath.Join(dir, "home/u/notes"), 1234, 1235))
	}
}

func TestImportDir(t *testing.T) {
	f := newFixture(t, Options{})
	ctx := context.Background()
	src := filepath.Join(f.dir, "tree")
	makeTree(t, src)
	spec := f.spec("fromdir")
	spec.RootfsDir = src
	spec.KernelArgs = "quiet"
	im, err := f.store.Import(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	img := im.RootfsPath
	checkAgent(t, img, f.agent)
	// /sbin links to usr/sbin: the agent went through the link.
	if st := statIn(t, img, "/usr/sbin/banger-agent"); st.typ != "regular" {
		t.Fatalf("agent not in /usr/sbin: %+v", st)
	}
	if got := catIn(t, img, "/etc/hello"); got != "hello from the image\n" {
		t.Fatalf("/etc/hello = %q", got)
	}
	if st := statIn(t, img, "/etc/shadow"); st.perm != 0 || st.uid != 0 {
		t.Fatalf("/etc/shadow: %+v; want mode 0000 owner 0", st)
	}
	tool := statIn(t, img, "/usr/bin/tool")
	if tool.perm != 0o4755 {
		t.Fatalf("/usr/bin/tool mode %04o; want 4755", tool.perm)
	}
	if out := debugfsOut(t, img, "stat /usr/bin/tool2"); !strings.Contains(out, "Links: 2") {
		t.Fatalf("hard link lost:\n%s", out)
	}
	if out := debugfsOut(t, img, "stat /hello-link"); !strings.Contains(out, `Fast link dest: "/etc/hello"`) {
		t.Fatalf("symlink target lost:\n%s", out)
	}
	if os.Geteuid() == 0 {
		if st := statIn(t, img, "/home/u/notes"); st.uid != 1234 || st.gid != 1235 || st.perm != 0o600 {
			t.Fatalf("/home/u/notes: %+v; want 1234:1235 0600", st)
		}
	}
	for _, mp := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/root"} {
		if st := statIn(t, img, mp); st.typ != "directory" {
			t.Fatalf("mount point %s: %+v", mp, st)
		}
	}
	if st := statIn(t, img, "/tmp"); st.perm != 0o1777 {
		t.Fatalf("/tmp mode %04o", st.perm)
	}
	fsckClean(t, img)

	if im.RootfsMiB != 64 || im.KernelArgs != "quiet" || im.Rootfs.From.Kind != OriginDir || im.Initrd != nil {
		t.Fatalf("manifest: %+v", im.Manifest)
	}
	if !slices.ContainsFunc(im.Notes, func(n string) bool { return strings.Contains(n, "fifos") }) {
		t.Fatalf("no note on the skipped fifo: %q", im.Notes)
	}
	if !strings.HasPrefix(im.Digest, "sha256:") || im.SizeBytes != im.Kernel.Size+im.Rootfs.Size {
		t.Fatalf("digest %q size %d", im.Digest, im.SizeBytes)
	}
	if err := f.store.Verify(ctx, "fromdir"); err != nil {
		t.Fatal(err)
	}
	// The parts are read-only, and the image is sparse on disk.
	fi, _ := os.Stat(img)
	if fi.Mode().Perm() != 0o444 {
		t.Fatalf("rootfs mode %v", fi.Mode())
	}
	if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > 16<<20 {
		t.Fatalf("rootfs takes %d bytes on disk; want it sparse", used)
	}
	got, err := f.store.Get(ctx, "fromdir")
	if err != nil || got.Digest != im.Digest || got.RootfsPath != img {
		t.Fatalf("Get: %+v, %v", got, err)
	}
	list, err := f.store.List(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "fromdir" || list[0].Problem != "" {
		t.Fatalf("List: %+v, %v", list, err)
	}
	if left := tmpEntries(t, f.store); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestImportDefaultSize(t *testing.T) {
	f := newFixture(t, Options{})
	src := filepath.Join(f.dir, "tree")
	makeTree(t, src)
	spec := f.spec("sized")
	spec.SizeMiB = 0
	spec.RootfsDir = src
	im, err := f.store.Import(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if im.RootfsMiB != defaultSizeMiB(1<<20) {
		t.Fatalf("rootfs %d MiB; want %d", im.RootfsMiB, defaultSizeMiB(1<<20))
	}
	fsckClean(t, im.RootfsPath)
	// The journal and the inode tables are zeros made holes.
	fi, _ := os.Stat(im.RootfsPath)
	if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > 16<<20 {
		t.Fatalf("a %d MiB rootfs takes %d bytes on disk; want it sparse", im.RootfsMiB, used)
	}
}

func TestImportTooSmall(t *testing.T) {
	f := newFixture(t, Options{})
	src := filepath.Join(f.dir, "tree")
	os.MkdirAll(src, 0o755)
	writeRandom(t, filepath.Join(src, "big"), 12<<20)
	spec := f.spec("small")
	spec.RootfsDir = src
	spec.SizeMiB = 8
	_, err := f.store.Import(context.Background(), spec)
	wantCode(t, err, "invalid_params")
	if left := tmpEntries(t, f.store); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestImportExt4(t *testing.T) {
	f := newFixture(t, Options{})
	ctx := context.Background()
	src := filepath.Join(f.dir, "tree")
	makeTree(t, src)
	img := filepath.Join(f.dir, "given.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", src, img, "32M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	before, _ := os.ReadFile(img)

	spec := f.spec("fromext4")
	spec.SizeMiB = 0
	spec.RootfsExt4 = img
	im, err := f.store.Import(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	checkAgent(t, im.RootfsPath, f.agent)
	if st := statIn(t, im.RootfsPath, "/usr/sbin/banger-agent"); st.typ != "regular" {
		t.Fatalf("agent not written through the /sbin link: %+v", st)
	}
	if got := catIn(t, im.RootfsPath, "/etc/hello"); got != "hello from the image\n" {
		t.Fatalf("/etc/hello = %q", got)
	}
	for _, mp := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/root"} {
		if st := statIn(t, im.RootfsPath, mp); st.typ != "directory" || st.uid != 0 {
			t.Fatalf("mount point %s: %+v", mp, st)
		}
	}
	fsckClean(t, im.RootfsPath)
	if im.RootfsMiB != 32 {
		t.Fatalf("rootfs %d MiB; want the given image's 32", im.RootfsMiB)
	}
	if after, _ := os.ReadFile(img); string(after) != string(before) {
		t.Fatal("the given ext4 image was changed")
	}
	if err := f.store.Verify(ctx, "fromext4"); err != nil {
		t.Fatal(err)
	}

	// Importing the result again replaces the agent already in it, and
	// grows the filesystem when asked.
	spec = f.spec("again")
	spec.RootfsExt4 = im.RootfsPath
	spec.SizeMiB = 96
	im2, err := f.store.Import(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	checkAgent(t, im2.RootfsPath, f.agent)
	fsckClean(t, im2.RootfsPath)
	if im2.RootfsMiB != 96 {
		t.Fatalf("rootfs %d MiB; want 96", im2.RootfsMiB)
	}
}

func TestImportExt4GrowsForAgent(t *testing.T) {
	requireTools(t, "resize2fs", "dumpe2fs")
	f := newFixture(t, Options{})
	src := filepath.Join(f.dir, "tree")
	os.MkdirAll(src, 0o755)
	writeRandom(t, filepath.Join(src, "filler"), 14<<20)
	img := filepath.Join(f.dir, "full.ext4")
	// Full: 14 MiB in 16 (under 1 MiB free), no journal, nothing reserved.
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", "-O", "^has_journal", "-d", src, img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	spec := f.spec("grown")
	spec.SizeMiB = 0
	spec.RootfsExt4 = img
	im, err := f.store.Import(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	checkAgent(t, im.RootfsPath, f.agent)
	fsckClean(t, im.RootfsPath)
	if im.RootfsMiB <= 16 {
		t.Fatalf("rootfs %d MiB; want it grown past 16", im.RootfsMiB)
	}
}

func TestImportExt4NotExt4(t *testing.T) {
	f := newFixture(t, Options{})
	spec := f.spec("bad")
	spec.RootfsExt4 = writeRandom(t, filepath.Join(f.dir, "disk.img"), 1<<20)
	_, err := f.store.Import(context.Background(), spec)
	wantCode(t, err, "invalid_params")
	if !strings.Contains(err.Error(), "not an ext2/3/4") {
		t.Fatalf("error %q does not say what is wrong", err)
	}
}

func TestImportDuplicate(t *testing.T) {
	f := newFixture(t, Options{})
	src := filepath.Join(f.dir, "tree")
	os.MkdirAll(src, 0o755)
	spec := f.spec("twice")
	spec.RootfsDir = src
	if _, err := f.store.Import(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	_, err := f.store.Import(context.Background(), spec)
	wantCode(t, err, "already_exists")
}

func TestImportBadNames(t *testing.T) {
	f := newFixture(t, Options{})
	src := filepath.Join(f.dir, "tree")
	os.MkdirAll(src, 0o755)
	for _, name := range []string{"", "UPPER", "-x", "x-", strings.Repeat("a", 64), "a/b", "..", "a_b", "a.b"} {
		t.Run(name, func(t *testing.T) {
			spec := f.spec(name)
			spec.RootfsDir = src
			_, err := f.store.Import(context.Background(), spec)
			wantCode(t, err, "invalid_params")
			_, err = f.store.Get(context.Background(), name)
			wantCode(t, err, "invalid_params")
		})
	}
	entries, _ := os.ReadDir(f.store.Root())
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			t.Fatalf("a bad name made %s", e.Name())
		}
	}
}

func TestImportBadSpecs(t *testing.T) {
	f := newFixture(t, Options{})
	src := filepath.Join(f.dir, "tree")
	os.MkdirAll(src, 0o755)
	missing := filepath.Join(f.dir, "missing")
	for _, tc := range []struct {
		name string
		edit func(*ImportSpec)
		code string
	}{
		{"no rootfs", func(s *ImportSpec) { s.RootfsDir = "" }, "invalid_params"},
		{"two rootfs", func(s *ImportSpec) { s.RootfsTar = f.kernel }, "invalid_params"},
		{"missing kernel", func(s *ImportSpec) { s.KernelPath = missing }, "not_found"},
		{"no kernel", func(s *ImportSpec) { s.KernelPath = "" }, "invalid_params"},
		{"kernel is a dir", func(s *ImportSpec) { s.KernelPath = src }, "invalid_params"},
		{"missing initrd", func(s *ImportSpec) { s.InitrdPath = missing }, "not_found"},
		{"missing agent", func(s *ImportSpec) { s.AgentBinary = missing }, "not_found"},
		{"missing rootfs dir", func(s *ImportSpec) { s.RootfsDir = missing }, "not_found"},
		{"rootfs dir is a file", func(s *ImportSpec) { s.RootfsDir = f.kernel }, "invalid_params"},
		{"missing tarball", func(s *ImportSpec) { s.RootfsDir, s.RootfsTar = "", missing }, "not_found"},
		{"missing ext4", func(s *ImportSpec) { s.RootfsDir, s.RootfsExt4 = "", missing }, "not_found"},
		{"rootfs dir holds the store", func(s *ImportSpec) { s.RootfsDir = f.dir }, "invalid_params"},
		{"negative size", func(s *ImportSpec) { s.SizeMiB = -1 }, "invalid_params"},
		{"two-line kernel args", func(s *ImportSpec) { s.KernelArgs = "a\nb" }, "invalid_params"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := f.spec("x")
			spec.RootfsDir = src
			tc.edit(&spec)
			_, err := f.store.Import(context.Background(), spec)
			wantCode(t, err, tc.code)
		})
	}
}

func TestImportWithHooks(t *testing.T) {
	var gotSrc string
	f := newFixture(t, Options{
		PrepareKernel: func(ctx context.Context, src, dst string) error {
			gotSrc = src
			return os.WriteFile(dst, []byte("vmlinux of "+filepath.Base(src)), 0o644)
		},
		BuildInitrd: func(ctx context.Context, kernel, dst string) (bool, error) {
			return true, os.WriteFile(dst, []byte("initrd for "+filepath.Base(kernel)), 0o644)
		},
	})
	ctx := context.Background()
	src := filepath.Join(f.dir, "tree")
	os.MkdirAll(src, 0o755)
	spec := f.spec("hooked")
	spec.RootfsDir = src
	im, err := f.store.Import(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if gotSrc != f.kernel {
		t.Fatalf("PrepareKernel got %q", gotSrc)
	}
	k, _ := os.ReadFile(im.KernelPath)
	i, _ := os.ReadFile(im.InitrdPath)
	if string(k) != "vmlinux of vmlinuz" || string(i) != "initrd for vmlinuz" || im.Initrd.From.Kind != OriginBuilt {
		t.Fatalf("kernel %q initrd %q manifest %+v", k, i, im.Initrd)
	}
	if err := f.store.Verify(ctx, "hooked"); err != nil {
		t.Fatal(err)
	}

	// A given initrd wins over the hook.
	spec = f.spec("given-initrd")
	spec.RootfsDir = src
	spec.InitrdPath = writeRandom(t, filepath.Join(f.dir, "initrd.img"), 4096)
	im, err = f.store.Import(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if im.Initrd == nil || im.Initrd.From.Kind != OriginFile || im.Initrd.Size != 4096 {
		t.Fatalf("initrd part %+v", im.Initrd)
	}

	// A failing hook fails the import and leaves nothing behind.
	f2 := newFixture(t, Options{PrepareKernel: func(ctx context.Context, src, dst string) error {
		return errors.New("not a kernel")
	}})
	spec = f2.spec("nokernel")
	spec.RootfsDir = src
	if _, err := f2.store.Import(ctx, spec); err == nil || !strings.Contains(err.Error(), "not a kernel") {
		t.Fatalf("import with a failing hook: %v", err)
	}
	if left := tmpEntries(t, f2.store); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	if _, err := f2.store.Get(ctx, "nokernel"); err == nil {
		t.Fatal("a failed import left an image")
	}
}

func TestDelete(t *testing.T) {
	f := newFixture(t, Options{})
	ctx := context.Background()
	src := filepath.Join(f.dir, "tree")
	os.MkdirAll(src, 0o755)
	spec := f.spec("doomed")
	spec.RootfsDir = src
	if _, err := f.store.Import(ctx, spec); err != nil {
		t.Fatal(err)
	}
	usedBy := func(ctx context.Context, image string) ([]string, error) {
		return []string{"vm-a", "vm-b"}, nil
	}
	err := f.store.Delete(ctx, "doomed", usedBy)
	wantCode(t, err, "conflict")
	if !strings.Contains(err.Error(), "vm-a, vm-b") {
		t.Fatalf("conflict %q does not name the VMs", err)
	}
	if _, err := f.store.Get(ctx, "doomed"); err != nil {
		t.Fatalf("image gone after a refused delete: %v", err)
	}
	unused := func(ctx context.Context, image string) ([]string, error) { return nil, nil }
	if err := f.store.Delete(ctx, "doomed", unused); err != nil {
		t.Fatal(err)
	}
	_, err = f.store.Get(ctx, "doomed")
	wantCode(t, err, "not_found")
	wantCode(t, f.store.Delete(ctx, "doomed", unused), "not_found")
	wantCode(t, f.store.Delete(ctx, "never", unused), "not_found")
	if left := tmpEntries(t, f.store); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestVerifyFindsCorruption(t *testing.T) {
	f := newFixture(t, Options{})
	ctx := context.Background()
	src := filepath.Join(f.dir, "tree")
	os.MkdirAll(src, 0o755)
	spec := f.spec("rotten")
	spec.RootfsDir = src
	im, err := f.store.Import(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(im.KernelPath, 0o644)
	fh, err := os.OpenFile(im.KernelPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A byte flipped: the kernel is random bytes, so writing a given
	// one would leave it unchanged once in 256 runs.
	b := make([]byte, 1)
	fh.ReadAt(b, 1000)
	fh.WriteAt([]byte{b[0] ^ 1}, 1000)
	fh.Close()
	if err := f.store.Verify(ctx, "rotten"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify of a changed kernel: %v; want ErrCorrupt", err)
	}
}

func TestListShowsBrokenImage(t *testing.T) {
	f := newFixture(t, Options{})
	ctx := context.Background()
	os.MkdirAll(filepath.Join(f.store.Root(), "broken"), 0o755)
	list, err := f.store.List(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "broken" || list[0].Problem == "" {
		t.Fatalf("List: %+v, %v", list, err)
	}
	if _, err := f.store.Get(ctx, "broken"); err == nil {
		t.Fatal("Get of a broken image gave no error")
	}
	if err := f.store.Delete(ctx, "broken", nil); err != nil {
		t.Fatalf("delete a broken image: %v", err)
	}
}

func TestImportNameBusy(t *testing.T) {
	f := newFixture(t, Options{})
	src := filepath.Join(f.dir, "tree")
	os.MkdirAll(src, 0o755)
	// Another import of the name holds its lock.
	l, err := tryLock(f.store.path(locksDir, "busy"), unix.LOCK_EX)
	if err != nil {
		t.Fatal(err)
	}
	spec := f.spec("busy")
	spec.RootfsDir = src
	_, err = f.store.Import(context.Background(), spec)
	wantCode(t, err, "conflict")
	l.unlock()
	if _, err := f.store.Import(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
}

func TestImportDirThroughSymlink(t *testing.T) {
	f := newFixture(t, Options{})
	src := filepath.Join(f.dir, "tree")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc/hello"), []byte("via a link"), 0o644)
	link := filepath.Join(f.dir, "current")
	os.Symlink("tree", link)
	spec := f.spec("linked")
	spec.RootfsDir = link
	im, err := f.store.Import(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if got := catIn(t, im.RootfsPath, "/etc/hello"); got != "via a link" {
		t.Fatalf("/etc/hello = %q", got)
	}
	// A link to a directory that holds the store is refused like the
	// directory itself.
	all := filepath.Join(t.TempDir(), "all")
	os.Symlink(f.dir, all)
	spec = f.spec("loop")
	spec.RootfsDir = all
	_, err = f.store.Import(context.Background(), spec)
	wantCode(t, err, "invalid_params")
}
