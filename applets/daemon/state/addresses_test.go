package state

import (
	"context"
	"database/sql"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"banger/internal/layout"
	"banger/rpc"
)

var (
	firstAddr = netip.MustParseAddr("10.77.0.2")
	lastAddr  = netip.MustParseAddr("10.77.0.4")
)

func allocate(t *testing.T, db *DB, name string) string {
	t.Helper()
	a, err := db.AllocateAddress(context.Background(), name, firstAddr, lastAddr)
	if err != nil {
		t.Fatalf("allocate for %s: %v", name, err)
	}
	return a.String()
}

func TestAllocateAddressLowestFreeAndReleased(t *testing.T) {
	ctx := context.Background()
	db := withImage(t)
	for _, n := range []string{"a", "b", "c", "d"} {
		if err := db.CreateVM(ctx, testVM(n)); err != nil {
			t.Fatal(err)
		}
	}
	if got := allocate(t, db, "a"); got != "10.77.0.2" {
		t.Errorf("a got %s", got)
	}
	if got := allocate(t, db, "a"); got != "10.77.0.2" {
		t.Errorf("a again got %s, want its own address kept", got)
	}
	if got := allocate(t, db, "b"); got != "10.77.0.3" {
		t.Errorf("b got %s", got)
	}
	if got := allocate(t, db, "c"); got != "10.77.0.4" {
		t.Errorf("c got %s", got)
	}
	_, err := db.AllocateAddress(ctx, "d", firstAddr, lastAddr)
	wantCode(t, err, rpc.CodeConflict)

	// A released address and a deleted VM's address are free again, the
	// lowest first.
	if err := db.ReleaseAddress(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if v, _ := db.GetVM(ctx, "b"); v.Address != "" {
		t.Errorf("b after release: %q", v.Address)
	}
	if err := db.DeleteVM(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got := allocate(t, db, "d"); got != "10.77.0.2" {
		t.Errorf("d got %s, want a's", got)
	}
	if got := allocate(t, db, "b"); got != "10.77.0.3" {
		t.Errorf("b got %s", got)
	}
	// An address outside a new range is replaced.
	a, err := db.AllocateAddress(ctx, "b", netip.MustParseAddr("10.78.0.2"), netip.MustParseAddr("10.78.0.9"))
	if err != nil || a.String() != "10.78.0.2" {
		t.Errorf("b in a new range: %s, %v", a, err)
	}
	_, err = db.AllocateAddress(ctx, "ghost", firstAddr, lastAddr)
	wantCode(t, err, rpc.CodeNotFound)

	// The unique index holds even against a direct write.
	_, err = db.UpdateVM(ctx, "c", func(v *VM) error { v.Address = "10.77.0.2"; return nil })
	wantCode(t, err, rpc.CodeConflict)
}

func TestAllocateAddressConcurrently(t *testing.T) {
	ctx := context.Background()
	db := withImage(t)
	const n = 20
	for i := range n {
		if err := db.CreateVM(ctx, testVM(fmt.Sprintf("vm%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	last := netip.MustParseAddr("10.77.0.254")
	var wg sync.WaitGroup
	got := make([]netip.Addr, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = db.AllocateAddress(ctx, fmt.Sprintf("vm%d", i), firstAddr, last)
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("vm%d: %v", i, errs[i])
		}
		if seen[got[i]] {
			t.Errorf("%s given twice", got[i])
		}
		seen[got[i]] = true
	}
	for a, i := firstAddr, 0; i < n; a, i = a.Next(), i+1 {
		if !seen[a] {
			t.Errorf("%s skipped: not the lowest free addresses", a)
		}
	}
}

func TestTapRecordedAndUnique(t *testing.T) {
	ctx := context.Background()
	db := withImage(t)
	a := testVM("a")
	a.Tap, a.Network = "bgtap-aaaa", "bridge"
	if err := db.CreateVM(ctx, a); err != nil {
		t.Fatal(err)
	}
	if v, _ := db.GetVM(ctx, "a"); v.Tap != "bgtap-aaaa" || v.Network != "bridge" {
		t.Errorf("a: %+v", v)
	}
	b := testVM("b")
	b.Tap = "bgtap-aaaa"
	wantCode(t, db.CreateVM(ctx, b), rpc.CodeConflict)
	b.Tap = ""
	if err := db.CreateVM(ctx, b); err != nil {
		t.Fatal(err)
	}
	_, err := db.UpdateVM(ctx, "b", func(v *VM) error { v.Tap = "bgtap-aaaa"; return nil })
	wantCode(t, err, rpc.CodeConflict)
	if _, err := db.UpdateVM(ctx, "a", func(v *VM) error { v.Tap = ""; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := db.UpdateVM(ctx, "b", func(v *VM) error { v.Tap = "bgtap-aaaa"; return nil }); err != nil {
		t.Errorf("a cleared tap name is free: %v", err)
	}
}

// oldDatabase writes a database at schema version (the first version
// migrations), with an image "img" and a stopped VM of each name, as an
// older banger left it, and returns its path.
func oldDatabase(t *testing.T, version int, vms ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), layout.Database)
	old, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	qs := append(slices.Clone(migrations[:version]), fmt.Sprintf(`PRAGMA user_version = %d`, version),
		`INSERT INTO images (name, digest, size_bytes, created) VALUES ('img', 'd', 1, '2024-01-01T00:00:00Z')`)
	for _, n := range vms {
		qs = append(qs, fmt.Sprintf(`INSERT INTO vms (id, name, image, cpus, memory_mib, disk_mib, state, network, created, updated, instance_dir)
			VALUES ('id-%[1]s', '%[1]s', 'img', 1, 256, 1024, 'stopped', 'user', '2024-01-01T00:00:00Z', '2024-01-01T00:00:00Z', '/x')`, n))
	}
	for _, q := range qs {
		if _, err := old.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	return path
}

// A database at schema 2 opens with its VMs holding no address and no tap.
func TestMigrateFromSchema2(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, oldDatabase(t, 2, "old", "old2"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, n := range []string{"old", "old2"} {
		if v, err := db.GetVM(ctx, n); err != nil || v.Address != "" || v.Tap != "" {
			t.Fatalf("%s after migration: %+v, %v", n, v, err)
		}
	}
	if got := allocate(t, db, "old"); got != "10.77.0.2" {
		t.Errorf("old got %s", got)
	}
}
