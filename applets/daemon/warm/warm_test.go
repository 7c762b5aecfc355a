package warm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/layout"
)

func key() Key {
	return Key{Image: "img", ImageDigest: "sha256:1", Kernel: "/k 1 2", Engine: "/q 1 2", Agent: "/a 1 2", CPUs: 1, MemoryMiB: 256}
}

func save(t *testing.T, s *Store, k Key, memory string) {
	t.Helper()
	_, err := s.Save(context.Background(), k, func(_ context.Context, mem, disk string) error {
		if err := os.WriteFile(mem, []byte(memory), 0o600); err != nil {
			return err
		}
		return os.WriteFile(disk, []byte("disk of "+memory), 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSaveCheckoutAndStaleKeys(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	vm := t.TempDir()
	disk, mem := filepath.Join(vm, "disk.qcow2"), filepath.Join(vm, "memory")
	if ok, err := s.Checkout(key(), disk, mem, ""); ok || err != nil {
		t.Fatalf("empty store: %v %v", ok, err)
	}
	save(t, s, key(), "first")
	if !s.Has(key()) {
		t.Fatal("saved snapshot not found")
	}
	if ok, err := s.Checkout(key(), disk, mem, ""); !ok || err != nil {
		t.Fatalf("checkout: %v %v", ok, err)
	}
	if b, _ := os.ReadFile(disk); string(b) != "disk of first" {
		t.Errorf("disk %q", b)
	}
	if b, _ := os.ReadFile(mem); string(b) != "first" {
		t.Errorf("memory %q", b)
	}
	// The VM's disk is its own copy: writing it leaves the snapshot's.
	os.WriteFile(disk, []byte("written by the vm"), 0o600)
	if b, _ := os.ReadFile(filepath.Join(dir, "img", layout.Disk)); string(b) != "disk of first" {
		t.Errorf("snapshot disk changed: %q", b)
	}
	// A replacement leaves a checked-out memory file whole.
	save(t, s, key(), "second")
	if b, _ := os.ReadFile(mem); string(b) != "first" {
		t.Errorf("checked-out memory after replacement %q", b)
	}
	// Another shape is a miss that keeps the snapshot (for VMs of its
	// own shape, until a save replaces it: a save that fails must not
	// cost the image its snapshot) ...
	other := key()
	other.MemoryMiB = 512
	if s.Has(other) {
		t.Error("a snapshot of another shape was taken as valid")
	}
	if ok, err := s.Checkout(other, disk+"2", mem+"2", ""); ok || err != nil {
		t.Errorf("checkout of another shape: %v %v", ok, err)
	}
	if !s.Has(key()) {
		t.Error("a look-up of another shape removed the snapshot")
	}
	// ... another image digest or engine is a miss, and removes the stale
	// one: no VM can use it again.
	other = key()
	other.Engine = "/q 1 3"
	if s.Has(other) {
		t.Error("a snapshot of another engine was taken as valid")
	}
	if _, err := os.Stat(filepath.Join(dir, "img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale snapshot left: %v", err)
	}
	if s.Has(key()) {
		t.Error("removed snapshot still found")
	}
}

func TestFailedSaveLeavesTheOldSnapshotAndNoPartial(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	save(t, s, key(), "good")
	_, err := s.Save(context.Background(), key(), func(_ context.Context, mem, disk string) error {
		os.WriteFile(mem, []byte("half"), 0o600)
		return errors.New("engine failed")
	})
	if err == nil {
		t.Fatal("failed fill saved")
	}
	m, ok := s.Get("img")
	if !ok || m.MemoryBytes != int64(len("good")) {
		t.Errorf("old snapshot: %+v %v", m, ok)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("store holds %d entries, want the image's only", len(entries))
	}
	// A partial save a crashed daemon left is removed on open.
	os.Mkdir(filepath.Join(dir, partialPrefix+"img-x"), 0o700)
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("partial save left after open: %d entries", len(entries))
	}
}

func TestCheckoutCarriesTheConsole(t *testing.T) {
	s, _ := Open(t.TempDir())
	_, err := s.Save(context.Background(), key(), func(_ context.Context, mem, disk string) error {
		os.WriteFile(mem, []byte("m"), 0o600)
		os.WriteFile(filepath.Join(filepath.Dir(mem), layout.Console), []byte("Linux version 6.1\n"), 0o600)
		return os.WriteFile(disk, []byte("d"), 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	vm := t.TempDir()
	console := filepath.Join(vm, "console.log")
	if ok, err := s.Checkout(key(), filepath.Join(vm, "disk"), filepath.Join(vm, "mem"), console); !ok || err != nil {
		t.Fatalf("checkout: %v %v", ok, err)
	}
	b, _ := os.ReadFile(console)
	if !strings.HasPrefix(string(b), "Linux version 6.1\n") || !strings.Contains(string(b), "restored from the warm snapshot of image img") {
		t.Errorf("console %q", b)
	}
}

// A snapshot whose memory is not the size it recorded (truncated by a
// full disk, or by hand) is not valid, and is removed.
func TestTruncatedSnapshotIsNotValid(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	save(t, s, key(), "a memory of some length")
	if err := os.Truncate(filepath.Join(dir, "img", layout.SnapshotMemory), 3); err != nil {
		t.Fatal(err)
	}
	vm := t.TempDir()
	if ok, err := s.Checkout(key(), filepath.Join(vm, "disk"), filepath.Join(vm, "memory"), ""); ok || err != nil {
		t.Errorf("checkout of a truncated snapshot: %v %v", ok, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("truncated snapshot left: %v", err)
	}
}

// Each network mode has a snapshot of its own (a user-mode VM's state
// does not load into a bridged one); dropping one keeps the other, and
// deleting the image removes both.
func TestEachNetworkModeHasItsSnapshot(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	bridged := key()
	bridged.Network = "bridge"
	save(t, s, key(), "user")
	save(t, s, bridged, "bridged")
	if !s.Has(key()) || !s.Has(bridged) {
		t.Fatal("the two modes' snapshots do not coexist")
	}
	vm := t.TempDir()
	if ok, err := s.Checkout(bridged, filepath.Join(vm, "disk"), filepath.Join(vm, "memory"), ""); !ok || err != nil {
		t.Fatalf("checkout bridged: %v %v", ok, err)
	}
	if b, _ := os.ReadFile(filepath.Join(vm, "memory")); string(b) != "bridged" {
		t.Errorf("bridged memory %q", b)
	}
	if m, ok := s.Get("img"); !ok || m.Key.Network != "" {
		t.Errorf("Get is the user-mode one: %+v %v", m, ok)
	}
	s.Drop(bridged)
	if s.Has(bridged) || !s.Has(key()) {
		t.Error("dropping the bridged snapshot")
	}
	save(t, s, bridged, "bridged")
	if err := s.Delete("img"); err != nil || s.Has(bridged) || s.Has(key()) {
		t.Errorf("delete: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left: %v", entries)
	}
}
