package kernelbuild

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"banger/rpc"
)

func fakeBuild(t *testing.T, vmlinux string) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "vmlinux"), []byte(vmlinux), 0o644)
	os.WriteFile(filepath.Join(dir, ".config"), []byte("CONFIG_A=y\n"), 0o644)
	return dir
}

func TestStoreInstallListDelete(t *testing.T) {
	root := t.TempDir()
	// What an interrupted build left is removed on open.
	os.MkdirAll(filepath.Join(root, buildPrefix+"x", "sub"), 0o755)
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, buildPrefix+"x")); !os.IsNotExist(err) {
		t.Errorf("leftover build dir: %v", err)
	}
	if _, err := s.Get("default"); rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Fatalf("Get of nothing = %v", err)
	}
	ctx := context.Background()
	k, err := s.Install(ctx, fakeBuild(t, "one"), Manifest{Name: "default", Release: "6.1.1"})
	if err != nil {
		t.Fatal(err)
	}
	if k.VmlinuxPath != s.VmlinuxPath("default") || k.SizeBytes != 3 || k.SHA256 == "" || k.Created.IsZero() {
		t.Errorf("installed %+v", k)
	}
	// A second install replaces the first.
	if k, err = s.Install(ctx, fakeBuild(t, "second"), Manifest{Name: "default"}); err != nil || k.SizeBytes != 6 {
		t.Fatalf("reinstall = %+v, %v", k, err)
	}
	if _, err := s.Install(ctx, fakeBuild(t, "x"), Manifest{Name: "other"}); err != nil {
		t.Fatal(err)
	}
	ks, err := s.List()
	if err != nil || len(ks) != 2 || ks[0].Name != "default" || ks[1].Name != "other" {
		t.Fatalf("List = %+v, %v", ks, err)
	}
	inUse := func(path string) ([]string, error) {
		if path == s.VmlinuxPath("default") {
			return []string{"img"}, nil
		}
		return nil, nil
	}
	if err := s.Delete("default", inUse); rpc.CodeOf(err) != rpc.CodeConflict {
		t.Errorf("Delete of a used kernel = %v, want conflict", err)
	}
	if err := s.Delete("other", inUse); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("other"); rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Errorf("Get after delete = %v", err)
	}
	if _, err := s.Get("../x"); rpc.CodeOf(err) != rpc.CodeInvalidParams {
		t.Errorf("Get of a bad name = %v", err)
	}
}
