package vm

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	"banger/applets/daemon/state"
	"banger/internal/api"
)

// What the VM service needs of the engine, the image store and the guest
// agent's channel, as small interfaces: the concrete packages (engine,
// imagestore, agentlink) are wired in by adapters (package vm/qemu,
// images.go), and a
// Firecracker engine or a vsock channel plugs in the same way.

// ErrExitedAtStart wraps a launch's error when the engine process ended
// as it started: for a launch that loads a saved state, the state did
// not load.
var ErrExitedAtStart = errors.New("the engine exited as it started")

// Engine starts VM processes and finds them again after a restart.
type Engine interface {
	Launch(ctx context.Context, spec LaunchSpec) (Process, error)
	// Attach finds the running engine process of an instance directory
	// (of the VM called name); an error means it is not running (or not
	// ours). A user-mode VM's network is made again from user (nil for a
	// bridged VM).
	Attach(ctx context.Context, instanceDir, name string, user *UserNet) (Process, error)
	// Leftovers removes the runtime files (sockets, pidfile) of an
	// instance whose process is gone, keeping its disk.
	Leftovers(instanceDir string) error
	// AttachPaused finds the process of an instance directory, like
	// Attach, but does not wait for its agent: its guest is paused (a
	// standby, moved into a VM's directory).
	AttachPaused(ctx context.Context, instanceDir string) (Process, error)
	// Identity names the engine's build, for warm snapshots' keys: a
	// state saved by one engine is loaded only by the same.
	Identity() (string, error)
}

// LaunchSpec is one boot of a VM.
type LaunchSpec struct {
	InstanceDir string
	Kernel      string
	Initrd      string
	Disk        string
	KernelArgs  string
	Hostname    string
	CPUs        int
	MemoryMiB   int
	// User is a user-mode VM's network; nil with no Tap is one with no
	// published ports that reaches nothing of the host (a standby's).
	User *UserNet
	// Tap is a bridged VM's network; nil gives it user-mode networking.
	Tap *LaunchTap
	// Incoming is a saved state the VM loads as it starts, instead of
	// booting (Process.LoadState waits for it).
	Incoming string
	// AwaitState launches the VM without booting, its memory allocated,
	// to be given a state later (Process.StartLoad).
	AwaitState bool
}

// GuestIdentity is what a guest restored from a warm snapshot is told it
// is: the snapshot's memory holds the identity of the guest it was taken
// from.
type GuestIdentity struct {
	Hostname  string
	MachineID string
	BootID    string
	Seed      []byte
	Time      time.Time
	// Tap is the bridged network; nil is user-mode networking.
	Tap *LaunchTap
}

// UserNet is a user-mode VM's network: the ports it publishes and the
// host loopback ports it reaches.
type UserNet struct {
	Ports     []state.PortForward
	AllowHost []int
}

// LaunchTap is a VM's network device on an existing tap, and the guest's
// static configuration.
type LaunchTap struct {
	Name    string
	MAC     string
	Address netip.Prefix // the guest's address on the bridge
	Gateway netip.Addr
	DNS     netip.Addr // none when invalid
	Search  string     // the guest's search domain, "" for none
}

// Helper is the root helper as the VM service uses it (helperLink).
type Helper interface {
	// Call makes one priv.* call with ctx's op id.
	Call(ctx context.Context, method string, params, result any) error
	// Configured is false when the daemon runs without a helper
	// (--helper none): bridged networking is then unavailable.
	Configured() bool
}

// Process is a running engine process, in two roles: the machine (its
// process, CPUs, memory state and network) and the guest agent inside it.
type Process interface {
	Machine
	Agent
	// Close lets go of the process (its agent link, its user network)
	// without ending it.
	Close() error
}

// Machine is what the engine does with a VM's process.
type Machine interface {
	PID() int
	// Exited is closed when the process has exited (the guest powered
	// off, panicked, or the process was killed).
	Exited() <-chan struct{}
	// Kill ends the process at once and waits for it.
	Kill(ctx context.Context) error
	// AddForward and RemoveForward change the published ports of the
	// running VM.
	AddForward(ctx context.Context, f state.PortForward) error
	RemoveForward(ctx context.Context, f state.PortForward) error
	// AllowHost sets the host loopback ports a user-mode VM reaches (a
	// standby's, once taken).
	AllowHost(ports []int) error
	// SaveState pauses the guest and saves its state to a file; it
	// stays paused until Continue, its disk then matching the state.
	SaveState(ctx context.Context, path string) error
	Continue(ctx context.Context) error
	// Pause stops the guest's CPUs until Continue (or a LoadState with
	// run).
	Pause(ctx context.Context) error
	// LoadState waits for a process launched Incoming to load its state
	// and, when run, for the guest to run (a process loaded without run
	// stays paused, a standby, until a LoadState with run).
	LoadState(ctx context.Context, run bool) error
	// StartLoad gives a process launched AwaitState the saved state to
	// load; LoadState then waits for it.
	StartLoad(ctx context.Context, path string) error
	// Moved tells the process its instance directory was renamed (a
	// standby taken by a VM); nothing else may use it meanwhile.
	Moved(dir string)
}

// Agent is what the VM service asks of the guest agent (and, where the
// agent does not answer, of the machine on its behalf).
type Agent interface {
	// CheckStandby is the cheap check of a standby before a create takes
	// it, bounded by ctx: its process alive, its agent link open, its
	// guest paused.
	CheckStandby(ctx context.Context) error
	// WaitAgent waits for the guest agent's readiness and returns the boot
	// id it reported.
	WaitAgent(ctx context.Context) (bootID string, err error)
	// Resume waits for the restored guest's agent and gives it its
	// identity; it returns the boot id the agent then reports.
	Resume(ctx context.Context, id GuestIdentity) (bootID string, err error)
	// Shutdown asks the guest to power off (agent first, then ACPI) and
	// waits for the process to exit, until ctx ends.
	Shutdown(ctx context.Context) error
	// OpenSession starts a stream method of the guest agent (agent.exec,
	// agent.untar) and returns its stream, carrying session frames.
	OpenSession(ctx context.Context, method string, params any) (net.Conn, error)
	// SignalSession signals the command of the exec session whose call
	// had the op id opID.
	SignalSession(ctx context.Context, opID string, sig int) error
	// GuestPorts lists what listens in the guest.
	GuestPorts(ctx context.Context) ([]api.GuestPort, error)
}

// Images resolves images for VMs.
type Images interface {
	// Resolve returns the image called name, assembling the default image
	// on first use.
	Resolve(ctx context.Context, name string) (Image, error)
	// Exists checks that the image is known (or is the default), at once,
	// so a bad name fails the call rather than the operation.
	Exists(ctx context.Context, name string) error
	// Overlay makes a VM's copy-on-write disk on the image at dst.
	Overlay(ctx context.Context, img Image, dst string, diskMiB int) error
	// ExecDefaults is what the image says its commands run with (an OCI
	// image's Env, WorkingDir, User, Entrypoint and Cmd); nothing for an
	// image that says nothing.
	ExecDefaults(ctx context.Context, name string) (api.OCIImage, error)
}

// Image is the parts of an image a boot needs.
type Image struct {
	Name       string
	Digest     string
	SizeBytes  int64
	Created    time.Time
	Kernel     string
	Initrd     string
	Rootfs     string
	KernelArgs string
	// AgentSHA256 is the sha256 of the banger binary the image carries
	// as its agent.
	AgentSHA256 string
}
