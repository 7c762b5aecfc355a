package engine

import (
	"fmt"
	"os"
	"path/filepath"

	"banger/internal/dirs"
)

// Files of an instance directory. Everything about one VM lives in its
// directory, so `ls` explains its state and cleanup is one `rm -r`.
const (
	// DiskFile is the VM's copy-on-write layer over its image's root
	// file system. The caller makes it (qemu-img create -b); the engine
	// only opens Spec.Disk, which is usually this file.
	DiskFile = "disk.qcow2"
	// ArgvFile is the exact argv QEMU was started with, as a JSON array,
	// written before QEMU starts: Attach compares it with the running
	// process's /proc/PID/cmdline.
	ArgvFile = "engine.argv"
	// PIDFile is QEMU's pid, written as soon as it is known and before
	// anything uses the VM.
	PIDFile = "qemu.pid"
	// ConsoleLog is the guest's serial console (ttyS0), from this boot.
	ConsoleLog = "console.log"
	// EngineLog is QEMU's own standard output and error.
	EngineLog = "qemu.log"
	// QMPSocket is QEMU's control socket.
	QMPSocket = "qmp.sock"
	// AgentSocket is the host end of the agent's virtio-serial port.
	AgentSocket = "agent.sock"
	// NetSocket is the host end of a user-mode VM's network card: QEMU's
	// stream netdev, which the daemon's user network connects to.
	NetSocket = "net.sock"
)

// KVMProbeFile, in the engine's state directory, caches the KVM probe's
// answer.
const KVMProbeFile = "kvm-probe.json"

// sockets are the instance directory's Unix sockets, whose paths must fit
// sun_path.
func sockets() []string { return []string{QMPSocket, AgentSocket, NetSocket} }

// runtimeFiles are what a running QEMU owns; they are removed when it is
// gone. The disk, the argv and the logs stay for inspection.
func runtimeFiles() []string { return []string{PIDFile, QMPSocket, AgentSocket, NetSocket} }

// CheckDir refuses an instance directory whose sockets' paths would not
// fit a Unix socket address (108 bytes with the NUL on Linux).
func CheckDir(dir string) error {
	for _, s := range sockets() {
		p := filepath.Join(dir, s)
		if len(p) > dirs.MaxSocketPath {
			return fmt.Errorf("instance directory %s is too long: its socket %s would be %d bytes and Linux allows %d; use a shorter state directory",
				dir, p, len(p), dirs.MaxSocketPath)
		}
	}
	return nil
}

// CleanRuntime removes the files a QEMU that is no longer running left
// in dir: its pidfile and sockets. Call it only once the process is gone.
func CleanRuntime(dir string) error {
	for _, f := range runtimeFiles() {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("clean %s: %w", dir, err)
		}
	}
	return nil
}
