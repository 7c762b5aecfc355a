package imagestore

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// A second import of the same kernel takes the kernel prepared and the
// initrd built by the first (hard links, the hooks not called); another
// kernel, or another agent for the initrd, makes its own; a part no image
// links is removed when the store opens again.
func TestImportCachesKernelAndInitrd(t *testing.T) {
	prepared, built := 0, 0
	opts := Options{
		PrepareKernel: func(ctx context.Context, src, dst string) error {
			prepared++
			return os.WriteFile(dst, []byte("vmlinux of "+filepath.Base(src)), 0o644)
		},
		BuildInitrd: func(ctx context.Context, kernel, dst string) (bool, error) {
			built++
			return true, os.WriteFile(dst, []byte("initrd for "+filepath.Base(kernel)), 0o644)
		},
	}
	f := newFixture(t, opts)
	ctx := context.Background()
	src := filepath.Join(f.dir, "tree")
	os.MkdirAll(src, 0o755)
	imp := func(name string, mod func(*ImportSpec)) Image {
		t.Helper()
		spec := f.spec(name)
		spec.RootfsDir = src
		if mod != nil {
			mod(&spec)
		}
		im, err := f.store.Import(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		return im
	}
	a := imp("a", nil)
	b := imp("b", nil)
	if prepared != 1 || built != 1 {
		t.Fatalf("hooks called %d and %d times for two imports of one kernel; want once each", prepared, built)
	}
	for _, p := range [][2]string{{a.KernelPath, b.KernelPath}, {a.InitrdPath, b.InitrdPath}} {
		if !sameFile(t, p[0], p[1]) {
			t.Errorf("%s and %s are not one file", p[0], p[1])
		}
	}
	if err := f.store.Verify(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	other := writeRandom(t, filepath.Join(f.dir, "vmlinuz-2"), 1000)
	imp("c", func(s *ImportSpec) { s.KernelPath = other })
	newAgent := writeRandom(t, filepath.Join(f.dir, "banger-2"), 700<<10)
	imp("d", func(s *ImportSpec) { s.AgentBinary = newAgent })
	if prepared != 2 || built != 3 {
		t.Fatalf("hooks called %d and %d times; want a kernel for the new kernel file, an initrd for it and for the new agent", prepared, built)
	}

	for _, name := range []string{"a", "b", "c", "d"} {
		if err := f.store.Delete(ctx, name, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Open(ctx, f.store.root, opts); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(f.store.path(partsDir)); len(left) != 0 {
		t.Errorf("parts no image links are left: %v", left)
	}
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	var sa, sb syscall.Stat_t
	if syscall.Stat(a, &sa) != nil || syscall.Stat(b, &sb) != nil {
		t.Fatalf("stat %s %s", a, b)
	}
	return sa.Ino == sb.Ino && sa.Dev == sb.Dev
}
