package imagestore

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// qemuImgInfo is the part of `qemu-img info --output=json` checked here.
type qemuImgInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	BackingFilename string `json:"backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
}

func imgInfo(t *testing.T, file string) qemuImgInfo {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "--output=json", file).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", file, err)
	}
	var info qemuImgInfo
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	return info
}

func TestOverlay(t *testing.T) {
	requireTools(t, "qemu-img")
	f := newFixture(t, Options{})
	ctx := context.Background()
	src := filepath.Join(f.dir, "tree")
	os.MkdirAll(src, 0o755)
	spec := f.spec("base")
	spec.RootfsDir = src
	im, err := f.store.Import(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	vm := filepath.Join(f.dir, "vm")
	os.Mkdir(vm, 0o700)

	disk := filepath.Join(vm, "disk.qcow2")
	start := time.Now()
	if err := f.store.Overlay(ctx, "base", disk, 0); err != nil {
		t.Fatal(err)
	}
	t.Logf("overlay made in %v", time.Since(start))
	info := imgInfo(t, disk)
	if info.Format != "qcow2" || info.BackingFilename != im.RootfsPath || info.BackingFormat != "raw" || info.VirtualSize != 64<<20 {
		t.Fatalf("overlay info %+v; want qcow2 on %s (raw), 64 MiB", info, im.RootfsPath)
	}
	if entries, _ := os.ReadDir(vm); len(entries) != 1 {
		t.Fatalf("overlay left files beside it: %v", entries)
	}

	// The image keeps the first overlay of a size as its template; the
	// next is a copy of it, what qemu-img would have made.
	if _, err := os.Stat(filepath.Join(im.Dir, ".overlay-0.qcow2")); err != nil {
		t.Fatalf("no template after the first overlay: %v", err)
	}
	again := filepath.Join(f.dir, "again.qcow2")
	if err := f.store.Overlay(ctx, "base", again, 0); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(disk)
	b, _ := os.ReadFile(again)
	if len(a) == 0 || string(a) != string(b) {
		t.Fatalf("the overlay copied from the template differs from qemu-img's (%d and %d bytes)", len(a), len(b))
	}
	if partials, _ := filepath.Glob(filepath.Join(im.Dir, "*.partial")); len(partials) != 0 {
		t.Fatalf("template parts left: %v", partials)
	}

	big := filepath.Join(vm, "big.qcow2")
	if err := f.store.Overlay(ctx, "base", big, 256); err != nil {
		t.Fatal(err)
	}
	if info := imgInfo(t, big); info.VirtualSize != 256<<20 {
		t.Fatalf("overlay with a size: %+v", info)
	}

	wantCode(t, f.store.Overlay(ctx, "base", filepath.Join(vm, "small.qcow2"), 32), "invalid_params")
	wantCode(t, f.store.Overlay(ctx, "base", disk, 0), "already_exists")
	wantCode(t, f.store.Overlay(ctx, "nope", filepath.Join(vm, "x.qcow2"), 0), "not_found")

	// Writes land in the overlay; the image stays as it was.
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Log("qemu-io not installed (Debian package qemu-utils): the write check is skipped")
		return
	}
	for _, c := range []string{"write -P 0xab 0 1M", "write -P 0xcd 40M 2M"} {
		if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", c, disk).CombinedOutput(); err != nil {
			t.Fatalf("qemu-io %s: %v\n%s", c, err, out)
		}
	}
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "read -P 0xab 0 1M", disk).CombinedOutput()
	if err != nil || strings.Contains(string(out), "Pattern verification failed") {
		t.Fatalf("read back from the overlay: %v\n%s", err, out)
	}
	if err := f.store.Verify(ctx, "base"); err != nil {
		t.Fatalf("the image changed under a written overlay: %v", err)
	}
	fsckClean(t, im.RootfsPath)
}

func TestOverlayWithoutQemuImg(t *testing.T) {
	f := newFixture(t, Options{})
	ctx := context.Background()
	src := filepath.Join(f.dir, "tree")
	os.MkdirAll(src, 0o755)
	spec := f.spec("base")
	spec.RootfsDir = src
	if _, err := f.store.Import(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", "/nonexistent")
	err := f.store.Overlay(ctx, "base", filepath.Join(f.dir, "disk.qcow2"), 0)
	wantCode(t, err, "unavailable")
	if !strings.Contains(err.Error(), "qemu-utils") {
		t.Fatalf("error %q does not name the package", err)
	}
}
