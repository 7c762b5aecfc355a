package state

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"banger/internal/layout"
	"banger/rpc"
)

func openTest(t *testing.T) (*DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), layout.Database)
	db, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, path
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	// The code it is answered with, at the RPC boundary.
	if err == nil || rpc.CodeOf(err) != code {
		t.Fatalf("error %v, want code %s", err, code)
	}
}

func TestVMAndImageRows(t *testing.T) {
	ctx := context.Background()
	db, _ := openTest(t)

	vm := VM{ID: "vm-1", Name: "box", Image: "default", CPUs: 1, MemoryMiB: 256, DiskMiB: 1024, State: VMCreating, Network: "user", InstanceDir: "/x"}
	wantCode(t, db.CreateVM(ctx, vm), rpc.CodeNotFound) // no such image yet

	if err := db.PutImage(ctx, Image{Name: "default", Digest: "sha256:1", SizeBytes: 10, Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := db.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	vm2 := vm
	vm2.ID = "vm-2"
	wantCode(t, db.CreateVM(ctx, vm2), rpc.CodeAlreadyExists)

	got, err := db.UpdateVM(ctx, "box", func(v *VM) error { v.State, v.PID = VMRunning, 42; return nil })
	if err != nil || got.State != VMRunning || got.PID != 42 {
		t.Fatalf("update: %+v %v", got, err)
	}
	if got, _ := db.GetVM(ctx, "box"); got.PID != 42 || string(got.Runtime) != "{}" || got.Created.IsZero() {
		t.Errorf("get: %+v", got)
	}
	_, err = db.UpdateVM(ctx, "box", func(v *VM) error { v.PID = 7; return errors.New("no") })
	if got, _ := db.GetVM(ctx, "box"); err == nil || got.PID != 42 {
		t.Errorf("a failed update changed the row: %+v", got)
	}
	_, err = db.GetVM(ctx, "nope")
	wantCode(t, err, rpc.CodeNotFound)

	wantCode(t, db.DeleteImage(ctx, "default"), rpc.CodeConflict)
	if users, _ := db.ImageUsers(ctx, "default"); len(users) != 1 || users[0] != "box" {
		t.Errorf("users: %v", users)
	}
	if err := db.DeleteVM(ctx, "box"); err != nil {
		t.Fatal(err)
	}
	wantCode(t, db.DeleteVM(ctx, "box"), rpc.CodeNotFound)
	if err := db.DeleteImage(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	wantCode(t, db.DeleteImage(ctx, "default"), rpc.CodeNotFound)
}

func TestOperationsRows(t *testing.T) {
	ctx := context.Background()
	db, _ := openTest(t)
	old := Operation{ID: "op-a", Kind: "vm.create", State: "succeeded", Created: time.Now().Add(-time.Hour), Finished: time.Now().Add(-time.Hour), Stages: "[]"}
	cur := Operation{ID: "op-b", Kind: "vm.create", State: "running", Created: time.Now(), Stages: "[]"}
	for _, op := range []Operation{old, cur} {
		if err := db.PutOperation(ctx, op); err != nil {
			t.Fatal(err)
		}
	}
	cur.State, cur.Finished = "failed", time.Now()
	if err := db.PutOperation(ctx, cur); err != nil {
		t.Fatal(err)
	}
	ops, _ := db.ListOperations(ctx, time.Time{})
	if len(ops) != 2 || ops[1].State != "failed" || ops[1].Finished.IsZero() {
		t.Fatalf("ops: %+v", ops)
	}
	db.PruneOperations(ctx, time.Now().Add(-10*time.Minute))
	if ops, _ := db.ListOperations(ctx, time.Time{}); len(ops) != 1 || ops[0].ID != "op-b" {
		t.Errorf("after prune: %+v", ops)
	}
}

func TestNewerSchemaIsRefused(t *testing.T) {
	db, path := openTest(t)
	db.sql.Exec(fmt.Sprintf(`PRAGMA user_version = %d`, len(migrations)+1))
	db.Close()
	if _, err := Open(context.Background(), path); err == nil {
		t.Fatal("a database from a newer banger was opened")
	}
}

// A writer killed with SIGKILL in the middle of its writes leaves a
// database that opens, passes SQLite's integrity check, and holds whole
// rows only.
func TestKilledWriterLeavesConsistentDatabase(t *testing.T) {
	if os.Getenv("STATE_TEST_WRITER") != "" {
		writeForever(os.Getenv("STATE_TEST_WRITER"))
		return
	}
	path := filepath.Join(t.TempDir(), layout.Database)
	for round := 0; round < 3; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKilledWriterLeavesConsistentDatabase$")
		cmd.Env = append(os.Environ(), "STATE_TEST_WRITER="+path)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(300+200*round) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()

		db, err := Open(context.Background(), path)
		if err != nil {
			t.Fatalf("reopen after kill: %v", err)
		}
		var check string
		db.sql.QueryRow(`PRAGMA integrity_check`).Scan(&check)
		if check != "ok" {
			t.Fatalf("integrity_check: %s", check)
		}
		vms, err := db.ListVMs(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vms {
			// Each update writes pid and boot id together.
			if fmt.Sprint(v.PID) != v.BootID {
				t.Fatalf("torn row: %+v", v)
			}
		}
		db.Close()
	}
}

func writeForever(path string) {
	ctx := context.Background()
	db, err := Open(ctx, path)
	if err != nil {
		os.Exit(3)
	}
	db.PutImage(ctx, Image{Name: "img", Digest: "d", Created: time.Now()})
	for i := 0; ; i++ {
		name := fmt.Sprintf("vm%d", i%50)
		if _, err := db.GetVM(ctx, name); err != nil {
			db.CreateVM(ctx, VM{ID: name + "-" + fmt.Sprint(os.Getpid(), i), Name: name, Image: "img", State: VMCreating, Network: "user", BootID: "0"})
			continue
		}
		db.UpdateVM(ctx, name, func(v *VM) error { v.PID = i; v.BootID = fmt.Sprint(i); return nil })
		if i%7 == 0 {
			db.DeleteVM(ctx, name)
		}
	}
}
