package state

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"banger/rpc"
)

// withImage opens a database with one image, for VMs to use.
func withImage(t *testing.T) *DB {
	t.Helper()
	db, _ := openTest(t)
	if err := db.PutImage(context.Background(), Image{Name: "img", Digest: "d", Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return db
}

func testVM(name string, ports ...PortForward) VM {
	return VM{ID: "id-" + name, Name: name, Image: "img", CPUs: 1, MemoryMiB: 256, State: VMStopped, Network: "user", Ports: ports}
}

func TestVMPortsRoundTrip(t *testing.T) {
	ctx := context.Background()
	db := withImage(t)
	ports := []PortForward{
		{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: 8080, GuestPort: 80},
		{Proto: "udp", HostAddr: "127.0.0.2", HostPort: 5353, GuestPort: 53},
	}
	if err := db.CreateVM(ctx, testVM("web", ports...)); err != nil {
		t.Fatal(err)
	}
	if err := db.CreateVM(ctx, testVM("bare")); err != nil {
		t.Fatal(err)
	}
	got, err := db.GetVM(ctx, "web")
	if err != nil || !reflect.DeepEqual(got.Ports, ports) {
		t.Fatalf("get: %+v, %v", got.Ports, err)
	}
	vms, err := db.ListVMs(ctx)
	if err != nil || len(vms) != 2 || !reflect.DeepEqual(vms[0].Ports, ports) || vms[1].Ports != nil {
		t.Fatalf("list: %+v, %v", vms, err)
	}
	more := append(slices.Clone(ports), PortForward{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: 2222, GuestPort: 22})
	got, err = db.UpdateVM(ctx, "web", func(v *VM) error { v.Ports = more; return nil })
	if err != nil || !reflect.DeepEqual(got.Ports, more) {
		t.Fatalf("update: %+v, %v", got.Ports, err)
	}
	if got, _ := db.GetVM(ctx, "web"); !reflect.DeepEqual(got.Ports, more) {
		t.Errorf("after update: %+v", got.Ports)
	}
	db.UpdateVM(ctx, "web", func(v *VM) error { v.Ports = nil; return nil })
	var raw string
	db.sql.QueryRow(`SELECT ports FROM vms WHERE name = 'web'`).Scan(&raw)
	if got, _ := db.GetVM(ctx, "web"); got.Ports != nil || raw != "[]" {
		t.Errorf("no ports: %+v, stored %q", got.Ports, raw)
	}
}

func TestVMPortsConflict(t *testing.T) {
	ctx := context.Background()
	db := withImage(t)
	tcp8080 := PortForward{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: 8080, GuestPort: 80}
	if err := db.CreateVM(ctx, testVM("a", tcp8080)); err != nil {
		t.Fatal(err)
	}
	wantConflict := func(what string, err error) {
		t.Helper()
		wantCode(t, err, rpc.CodeConflict)
		if !strings.Contains(err.Error(), `VM "a"`) || !strings.Contains(err.Error(), "8080") {
			t.Errorf("%s: %v does not name the other VM and the port", what, err)
		}
	}
	// The same port on another loopback address is the same host port
	// to a user; an empty protocol is tcp.
	wantConflict("create", db.CreateVM(ctx, testVM("b", PortForward{HostAddr: "127.0.0.2", HostPort: 8080, GuestPort: 8080})))
	if _, err := db.GetVM(ctx, "b"); rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Fatalf("a refused create left a row: %v", err)
	}
	// UDP 8080 is another port.
	if err := db.CreateVM(ctx, testVM("b", PortForward{Proto: "udp", HostAddr: "127.0.0.1", HostPort: 8080, GuestPort: 53})); err != nil {
		t.Fatal(err)
	}
	_, err := db.UpdateVM(ctx, "b", func(v *VM) error { v.Ports = append(v.Ports, tcp8080); return nil })
	wantConflict("update", err)
	if got, _ := db.GetVM(ctx, "b"); len(got.Ports) != 1 {
		t.Errorf("a refused update changed the row: %+v", got.Ports)
	}
	// A's own updates keep its ports.
	if _, err := db.UpdateVM(ctx, "a", func(v *VM) error { v.State = VMRunning; return nil }); err != nil {
		t.Errorf("updating the publisher: %v", err)
	}
	// Once a is gone, its port is free.
	if err := db.DeleteVM(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.UpdateVM(ctx, "b", func(v *VM) error { v.Ports = append(v.Ports, tcp8080); return nil }); err != nil {
		t.Errorf("taking a deleted VM's port: %v", err)
	}
}

// A database written at schema 1, before VMs had ports, opens, keeps its
// rows, and gives them no ports.
func TestMigrateFromSchema1(t *testing.T) {
	ctx := context.Background()
	path := oldDatabase(t, 1, "old")
	db, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var version int
	db.sql.QueryRow(`PRAGMA user_version`).Scan(&version)
	if version != len(migrations) || version < 2 {
		t.Errorf("schema %d after migration, want %d", version, len(migrations))
	}
	v, err := db.GetVM(ctx, "old")
	if err != nil || v.Ports != nil || v.InstanceDir != "/x" {
		t.Fatalf("old row: %+v, %v", v, err)
	}
	p := PortForward{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: 2222, GuestPort: 22}
	if _, err := db.UpdateVM(ctx, "old", func(v *VM) error { v.Ports = []PortForward{p}; return nil }); err != nil {
		t.Fatal(err)
	}
	if v, _ := db.GetVM(ctx, "old"); len(v.Ports) != 1 || v.Ports[0] != p {
		t.Errorf("ports after migration: %+v", v.Ports)
	}
}
