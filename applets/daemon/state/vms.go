package state

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"banger/internal/errdefs"
)

// VM states.
const (
	VMCreating = "creating" // rows exist while a create runs; cleaned if it dies
	VMStarting = "starting"
	VMRunning  = "running"
	VMStopping = "stopping"
	VMStopped  = "stopped"
	VMFailed   = "failed"
)

// VM is one VM's row.
type VM struct {
	ID          string
	Name        string
	Image       string
	CPUs        int
	MemoryMiB   int
	DiskMiB     int
	State       string
	Network     string
	Created     time.Time
	Updated     time.Time
	LastError   string
	InstanceDir string
	// Runtime handles, written before they are used so that a restarted
	// daemon finds what a dead one left.
	PID     int
	BootID  string
	Runtime json.RawMessage // engine-specific handles (sockets, forwards)
	// Address is a bridged VM's IPv4 address ("10.77.0.2"), empty for
	// none: unique among the rows, so deleting the row releases it
	// (AllocateAddress, ReleaseAddress).
	Address string
	// Tap is the name of the VM's tap while one may exist: set before the
	// tap is made, cleared after it is removed. Unique among the rows.
	Tap string
	// Ports are the VM's published ports. A host port is published by
	// one VM at most, running or not, so a stopped VM can start again.
	Ports []PortForward
	// AllowHost are the host loopback ports a user-mode VM reaches at its
	// gateway address; it reaches nothing else of the host.
	AllowHost []int
}

// PortForward is one published port: the host's HostAddr:HostPort
// forwarded to the guest's GuestPort.
type PortForward struct {
	Proto     string `json:"proto"` // "tcp" or "udp"; empty is tcp
	HostAddr  string `json:"host_addr"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
}

const vmColumns = `id, name, image, cpus, memory_mib, disk_mib, state, network, created, updated,
	last_error, instance_dir, pid, boot_id, runtime, ports, address, tap, allow_host`

func scanVM(row interface{ Scan(...any) error }) (VM, error) {
	var v VM
	var created, updated, runtime, ports, allowHost string
	err := row.Scan(&v.ID, &v.Name, &v.Image, &v.CPUs, &v.MemoryMiB, &v.DiskMiB, &v.State, &v.Network,
		&created, &updated, &v.LastError, &v.InstanceDir, &v.PID, &v.BootID, &runtime, &ports, &v.Address, &v.Tap, &allowHost)
	if err != nil {
		return v, err
	}
	v.Created, v.Updated, v.Runtime = parseTime(created), parseTime(updated), json.RawMessage(runtime)
	if err := json.Unmarshal([]byte(ports), &v.Ports); err != nil {
		return v, fmt.Errorf("vm %s: ports %q: %w", v.Name, ports, err)
	}
	if len(v.Ports) == 0 {
		v.Ports = nil
	}
	if err := json.Unmarshal([]byte(allowHost), &v.AllowHost); err != nil {
		return v, fmt.Errorf("vm %s: allow_host %q: %w", v.Name, allowHost, err)
	}
	if len(v.AllowHost) == 0 {
		v.AllowHost = nil
	}
	return v, nil
}

// listJSON is a JSON array column's text: "[]" for none.
func listJSON[T any](list []T) (string, error) {
	if len(list) == 0 {
		return "[]", nil
	}
	b, err := json.Marshal(list)
	return string(b), err
}

// portsJSON is the ports column's text.
func portsJSON(ports []PortForward) (string, error) { return listJSON(ports) }

// checkPorts refuses ports that another VM than v publishes: a host port
// (per protocol, whatever the loopback address) belongs to one VM.
func checkPorts(ctx context.Context, tx *sql.Tx, v VM) error {
	if len(v.Ports) == 0 {
		return nil
	}
	rows, err := tx.QueryContext(ctx, `SELECT name, ports FROM vms WHERE id != ? AND ports != '[]' ORDER BY name`, v.ID)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var name, raw string
		var theirs []PortForward
		if err := rows.Scan(&name, &raw); err != nil {
			return err
		}
		if err := json.Unmarshal([]byte(raw), &theirs); err != nil {
			return fmt.Errorf("vm %s: ports %q: %w", name, raw, err)
		}
		for _, p := range v.Ports {
			for _, q := range theirs {
				if p.HostPort == q.HostPort && p.proto() == q.proto() {
					return errdefs.Errorf(errdefs.ErrConflict, "host port %d (%s) is already published by VM %q; pick another host port, or remove it from %q first",
						p.HostPort, p.proto(), name, name)
				}
			}
		}
	}
	return rows.Err()
}

func (p PortForward) proto() string {
	if p.Proto == "" {
		return "tcp"
	}
	return p.Proto
}

// CreateVM inserts a VM; a taken name is already_exists, an unknown image
// not_found, a host port another VM publishes conflict.
func (d *DB) CreateVM(ctx context.Context, v VM) error {
	now := time.Now()
	if v.Created.IsZero() {
		v.Created = now
	}
	if len(v.Runtime) == 0 {
		v.Runtime = json.RawMessage("{}")
	}
	return d.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM images WHERE name = ?`, v.Image).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return notFound("image", v.Image)
		}
		ports, err := portsJSON(v.Ports)
		if err != nil {
			return err
		}
		allowHost, err := listJSON(v.AllowHost)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO vms (`+vmColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
			v.ID, v.Name, v.Image, v.CPUs, v.MemoryMiB, v.DiskMiB, v.State, v.Network,
			fmtTime(v.Created), fmtTime(now), v.LastError, v.InstanceDir, v.PID, v.BootID, string(v.Runtime), ports, v.Address, v.Tap, allowHost)
		if err := uniqueConflict(err, v); err != nil {
			return err
		}
		return checkPorts(ctx, tx, v)
	})
}

// uniqueConflict turns a unique constraint's failure into the protocol's
// error for what is taken; other errors pass as they are.
func uniqueConflict(err error, v VM) error {
	if err == nil || !strings.Contains(err.Error(), "UNIQUE constraint failed") {
		return err
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "vms.name"):
		return errdefs.Errorf(errdefs.ErrAlreadyExists, "a VM named %q already exists; pick another name or delete it first", v.Name)
	case strings.Contains(msg, "vms.address"):
		return errdefs.Errorf(errdefs.ErrConflict, "address %s is held by another VM", v.Address)
	case strings.Contains(msg, "vms.tap"):
		return errdefs.Errorf(errdefs.ErrConflict, "tap %s is recorded for another VM", v.Tap)
	}
	return err
}

// GetVM returns the VM called name.
func (d *DB) GetVM(ctx context.Context, name string) (VM, error) {
	v, err := scanVM(d.sql.QueryRowContext(ctx, `SELECT `+vmColumns+` FROM vms WHERE name = ?`, name))
	if isNoRows(err) {
		return VM{}, notFound("vm", name)
	}
	return v, err
}

// ListVMs returns every VM, oldest first.
func (d *DB) ListVMs(ctx context.Context) ([]VM, error) {
	rows, err := d.sql.QueryContext(ctx, `SELECT `+vmColumns+` FROM vms ORDER BY created, name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []VM
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// UpdateVM reads the VM called name, lets fn change it, and writes it back,
// in one transaction. fn's error aborts the update and is returned; ports
// changed to a host port another VM publishes are a conflict.
func (d *DB) UpdateVM(ctx context.Context, name string, fn func(*VM) error) (VM, error) {
	var out VM
	err := d.tx(ctx, func(tx *sql.Tx) error {
		v, err := scanVM(tx.QueryRowContext(ctx, `SELECT `+vmColumns+` FROM vms WHERE name = ?`, name))
		if isNoRows(err) {
			return notFound("vm", name)
		}
		if err != nil {
			return err
		}
		before, err := portsJSON(v.Ports)
		if err != nil {
			return err
		}
		if err := fn(&v); err != nil {
			return err
		}
		if len(v.Runtime) == 0 {
			v.Runtime = json.RawMessage("{}")
		}
		ports, err := portsJSON(v.Ports)
		if err != nil {
			return err
		}
		allowHost, err := listJSON(v.AllowHost)
		if err != nil {
			return err
		}
		// Only a change of ports is checked: a state change never fails
		// on them.
		if ports != before {
			if err := checkPorts(ctx, tx, v); err != nil {
				return err
			}
		}
		v.Updated = time.Now()
		_, err = tx.ExecContext(ctx, `UPDATE vms SET cpus=?, memory_mib=?, disk_mib=?, state=?, network=?, updated=?,
			last_error=?, instance_dir=?, pid=?, boot_id=?, runtime=?, ports=?, address=?, tap=?, allow_host=? WHERE id = ?`,
			v.CPUs, v.MemoryMiB, v.DiskMiB, v.State, v.Network, fmtTime(v.Updated),
			v.LastError, v.InstanceDir, v.PID, v.BootID, string(v.Runtime), ports, v.Address, v.Tap, allowHost, v.ID)
		out = v
		return uniqueConflict(err, v)
	})
	return out, err
}

// DeleteVM removes the VM's row.
func (d *DB) DeleteVM(ctx context.Context, name string) error {
	res, err := d.sql.ExecContext(ctx, `DELETE FROM vms WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("delete vm %s: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return notFound("vm", name)
	}
	return nil
}
