package imagestore

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// vmDisk makes what a VM's disk is: a qcow2 overlay on an image of the
// tree, whose guest wrote a file and was given a machine id. The writes
// are made in a raw copy (debugfs edits raw files only) that becomes the
// overlay's content.
func vmDisk(t *testing.T, f *fixture, tree string) string {
	t.Helper()
	raw := filepath.Join(f.dir, "guest.raw")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, raw, "48M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	for name, content := range map[string]string{"made": "written in the VM\n", "machine-id": "0123456789abcdef0123456789abcdef\n"} {
		if err := os.WriteFile(filepath.Join(f.dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := debugfs(context.Background(), f.dir, raw, true, "cd /etc\nwrite "+name+" "+name+"\n"); err != nil {
			t.Fatal(err)
		}
	}
	disk := filepath.Join(f.dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "convert", "-O", "qcow2", raw, disk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	return disk
}

func TestImportVMDisk(t *testing.T) {
	requireTools(t, "qemu-img")
	f := newFixture(t, Options{})
	ctx := context.Background()
	tree := filepath.Join(f.dir, "tree")
	makeTree(t, tree)
	disk := vmDisk(t, f, tree)

	spec := f.spec("committed")
	spec.SizeMiB = 0
	spec.RootfsDisk, spec.Origin = disk, "box"
	spec.Defaults = &OCIImage{Env: []string{"A=1"}, WorkingDir: "/work"}
	spec.Notes = []string{"committed from VM box"}
	im, err := f.store.Import(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if got := catIn(t, im.RootfsPath, "/etc/made"); got != "written in the VM\n" {
		t.Fatalf("/etc/made = %q; want what the VM wrote", got)
	}
	if got := catIn(t, im.RootfsPath, "/etc/hello"); got != "hello from the image\n" {
		t.Fatalf("/etc/hello = %q; want the image's", got)
	}
	if _, err := statInImage(ctx, im.RootfsPath, machineIDPath); err == nil {
		t.Fatal("the VM's machine id is still in the committed image")
	}
	checkAgent(t, im.RootfsPath, f.agent)
	fsckClean(t, im.RootfsPath)
	if im.RootfsMiB != 48 {
		t.Fatalf("rootfs %d MiB; want the disk's 48", im.RootfsMiB)
	}
	if im.Rootfs.From != (Origin{Kind: OriginVM, Path: "box"}) {
		t.Fatalf("rootfs origin %+v; want the VM", im.Rootfs.From)
	}
	if im.OCI == nil || im.OCI.WorkingDir != "/work" || len(im.Notes) == 0 || im.Notes[0] != "committed from VM box" {
		t.Fatalf("defaults %+v, notes %q; want the spec's", im.OCI, im.Notes)
	}
	if err := f.store.Verify(ctx, "committed"); err != nil {
		t.Fatal(err)
	}
	if info := imgInfo(t, disk); info.Format != "qcow2" {
		t.Fatalf("the VM's disk was changed: %+v", info)
	}
}

// A disk without an ext4 filesystem (a whole-disk image, or garbage) is
// refused, and leaves nothing in the store.
func TestImportVMDiskNotExt4(t *testing.T) {
	requireTools(t, "qemu-img")
	f := newFixture(t, Options{})
	disk := writeRandom(t, filepath.Join(f.dir, "disk.raw"), 2<<20)
	spec := f.spec("bad")
	spec.RootfsDisk = disk
	_, err := f.store.Import(context.Background(), spec)
	wantCode(t, err, "invalid_params")
	if left := tmpEntries(t, f.store); len(left) != 0 {
		t.Fatalf("left in the store's tmp: %v", left)
	}
	if _, err := f.store.Get(context.Background(), "bad"); err == nil {
		t.Fatal("a half image was published")
	}
}
