package imagestore

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// ReplaceAgent gives an image another agent and keeps the rest: its
// root's files, its origin, its kernel's origin, its build key; an initrd
// made with the old agent is made again. An image a VM uses is kept.
func TestReplaceAgent(t *testing.T) {
	built := 0
	f := newFixture(t, Options{
		PrepareKernel: func(ctx context.Context, src, dst string) error {
			return os.WriteFile(dst, []byte("vmlinux of "+filepath.Base(src)), 0o644)
		},
		BuildInitrd: func(ctx context.Context, kernel, dst string) (bool, error) {
			built++
			return true, os.WriteFile(dst, []byte("initrd"), 0o644)
		},
	})
	ctx := context.Background()
	src := filepath.Join(f.dir, "tree")
	makeTree(t, src)
	spec := f.spec("img")
	spec.RootfsDir, spec.BuildKey, spec.KernelArgs = src, "sha256:key", "quiet"
	old, err := f.store.Import(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	agent := writeRandom(t, filepath.Join(f.dir, "banger-new"), 600<<10)

	inUse := func(context.Context, string) ([]string, error) { return []string{"box"}, nil }
	_, err = f.store.ReplaceAgent(ctx, "img", agent, inUse)
	wantCode(t, err, "conflict")
	if kept, err := f.store.Get(ctx, "img"); err != nil || kept.Digest != old.Digest {
		t.Fatalf("an image in use was not kept: %+v %v", kept, err)
	}

	im, err := f.store.ReplaceAgent(ctx, "img", agent, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkAgent(t, im.RootfsPath, agent)
	if got := catIn(t, im.RootfsPath, "/etc/hello"); got != "hello from the image\n" {
		t.Errorf("/etc/hello = %q; want the old root's", got)
	}
	if im.Rootfs.From != old.Rootfs.From || im.Kernel.From != old.Kernel.From || im.BuildKey != "sha256:key" || im.KernelArgs != "quiet" {
		t.Errorf("replaced: rootfs from %+v, kernel from %+v, key %q, args %q; want the old image's %+v, %+v", im.Rootfs.From, im.Kernel.From, im.BuildKey, im.KernelArgs, old.Rootfs.From, old.Kernel.From)
	}
	if built != 2 || im.Initrd == nil {
		t.Errorf("initrd built %d times, part %+v; want it made again for the new agent", built, im.Initrd)
	}
	if err := f.store.Verify(ctx, "img"); err != nil {
		t.Fatal(err)
	}
	if left := tmpEntries(t, f.store); len(left) != 0 {
		t.Errorf("left in the store's tmp: %v", left)
	}
}
