package daemon

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"banger/applets/daemon/kernel/kernelbuild"
	"banger/applets/daemon/operation"
	"banger/internal/api"
	"banger/rpc"
)

// TestKernelBuildCancel cancels a build during its configure step (a fake
// source whose make hangs) and checks that the operation ends canceled at
// once, its tree is gone, and the next build may begin.
func TestKernelBuildCancel(t *testing.T) {
	if err := kernelbuild.CheckTools(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src", "linux-fake")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "Makefile"), []byte("tinyconfig:\n\tsleep 300\n"), 0o644)
	tarball := filepath.Join(dir, "linux-source-fake.tar.xz")
	if out, err := exec.Command("tar", "-cJf", tarball, "-C", filepath.Join(dir, "src"), "linux-fake").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	store, err := kernelbuild.Open(filepath.Join(dir, "kernels"))
	if err != nil {
		t.Fatal(err)
	}
	ops := operation.NewRegistry(nil)
	m := &kernelMethods{store: store, ops: ops, source: tarball}
	ctx := rpc.WithOpID(context.Background(), rpc.NewOpID())
	op, err := m.buildBegin(ctx, api.KernelBuild{Name: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.buildBegin(rpc.WithOpID(context.Background(), rpc.NewOpID()), api.KernelBuild{Name: "k2"}); rpc.CodeOf(err) != rpc.CodeConflict {
		t.Errorf("a second build at once = %v, want conflict", err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		op, _ = ops.Status(op.ID)
		if op.Current == "configure" {
			break
		}
		if op.Done() || time.Now().After(deadline) {
			t.Fatalf("never reached configure: %+v", op)
		}
	}
	time.Sleep(200 * time.Millisecond) // make has started its sleep
	start := time.Now()
	ops.Cancel(ctx, op.ID)
	op, err = ops.Wait(ctx, op.ID, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if op.State != api.OpCanceled {
		t.Fatalf("state %s, want canceled: %+v", op.State, op)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("cancel took %s", d)
	}
	if _, err := os.Stat(store.BuildDir("k")); !os.IsNotExist(err) {
		t.Errorf("build tree left: %v", err)
	}
	if _, err := store.Get("k"); rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Errorf("a canceled build was installed: %v", err)
	}
	// The slot is free again (this one is canceled at once).
	op2, err := m.buildBegin(rpc.WithOpID(context.Background(), rpc.NewOpID()), api.KernelBuild{Name: "k"})
	if err != nil {
		t.Fatalf("build after cancel: %v", err)
	}
	ops.Cancel(ctx, op2.ID)
	ops.Wait(ctx, op2.ID, 10*time.Second)
}
