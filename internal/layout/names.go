package layout

import (
	"fmt"
	"path/filepath"
)

// The state directory ($XDG_STATE_HOME/banger, or /var/lib/banger for
// the system install's daemon).
const (
	Database     = "banger.db" // the VMs, images and operations (state)
	VMsDir       = "vms"       // an instance directory per VM, by id
	StandbyDir   = "standby"   // standbys, beside VMsDir: a create takes one with a rename
	ImagesDir    = "images"    // the image store, a directory per image
	KernelsDir   = "kernels"   // built kernels, a directory per kernel
	SnapshotsDir = "snapshots" // warm snapshots, a directory per image
	KVMProbe     = "kvm-probe.json"
	// LastTrace is the trace id of the last command the client ran (in
	// the user's own state directory): banger trace --last.
	LastTrace = "last-trace"
)

// An instance directory: everything about one VM (or standby), so `ls`
// explains its state and cleanup is one `rm -r`.
const (
	// Disk is the VM's copy-on-write layer over its image's root file
	// system (also a snapshot's saved disk).
	Disk = "disk.qcow2"
	// Argv is the exact argv QEMU was started with, as a JSON array,
	// written before it starts: a restarted daemon compares it with the
	// running process's /proc/PID/cmdline.
	Argv = "engine.argv"
	// PID is QEMU's pid, written as soon as it is known.
	PID = "qemu.pid"
	// Console is the guest's serial console (also a snapshot's, up to
	// its save).
	Console = "console.log"
	// EngineLog is QEMU's own standard output and error.
	EngineLog = "qemu.log"
	// QMPSocket is QEMU's control socket.
	QMPSocket = "qmp.sock"
	// AgentSocket is the host end of the agent's virtio-serial port.
	AgentSocket = "agent.sock"
	// NetSocket is the host end of a user-mode VM's network card.
	NetSocket = "net.sock"
	// WarmMemory is a snapshot's memory, copied in for QEMU to load.
	WarmMemory = "warm.memory"
)

// InstanceSockets are an instance directory's Unix sockets, whose paths
// must fit sun_path.
func InstanceSockets() []string { return []string{QMPSocket, AgentSocket, NetSocket} }

// CheckInstanceDir refuses an instance directory whose sockets' paths
// would not fit a Unix socket address.
func CheckInstanceDir(dir string) error {
	for _, s := range InstanceSockets() {
		p := filepath.Join(dir, s)
		if len(p) > MaxSocketPath {
			return fmt.Errorf("instance directory %s is too long: its socket %s would be %d bytes and Linux allows %d; use a shorter state directory",
				dir, p, len(p), MaxSocketPath)
		}
	}
	return nil
}

// A snapshot's directory (and Disk, Console).
const (
	SnapshotMemory   = "memory"
	SnapshotManifest = "snapshot.json"
)

// An image's directory.
const (
	ImageManifest = "manifest.json"
	ImageKernel   = "vmlinux"
	ImageInitrd   = "initrd"
	ImageRootfs   = "rootfs.ext4"
)

// A built kernel's directory.
const (
	KernelVmlinux  = "vmlinux"       // the uncompressed kernel QEMU boots
	KernelConfig   = "config"        // the .config it was built with
	KernelManifest = "manifest.json" // written last: a directory with one is complete
)
