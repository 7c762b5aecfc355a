package engine

import (
	"os"
	"path/filepath"
	"strings"

	"banger/applets/agent/boot"
	"banger/internal/api"
	"banger/internal/errdefs"
)

// Spec describes one VM to launch.
type Spec struct {
	// Dir is the instance directory; it must exist. QEMU's files go there.
	Dir string
	// Name labels the QEMU process (-name); empty uses Dir's base name.
	Name string
	// Kernel is the kernel to boot: an uncompressed vmlinux (PVH) boots
	// fastest; a bzImage works too.
	Kernel string
	// Initrd is an optional initramfs.
	Initrd string
	// Disk is the root disk, the guest's /dev/vda: usually the VM's own
	// qcow2 overlay over the image's read-only root.
	Disk string
	// DiskFormat is Disk's format; empty means qcow2.
	DiskFormat string
	// CPUs and MemoryMiB size the guest; zero means 1 and 256.
	CPUs      int
	MemoryMiB int
	// KernelArgs are appended to the engine's own parameters (console,
	// root disk, the agent as init, network, clock), so they can override
	// them.
	KernelArgs []string
	// Accel picks the accelerator; empty means auto.
	Accel Accel
	// Net is the guest's user-mode network (eth0); nil gives it none.
	Net *UserNet
	// Tap puts the guest's eth0 on a tap instead (bridged networking);
	// at most one of Net and Tap is set.
	Tap *TapNet
	// Incoming is a state SaveState wrote: QEMU loads it as it starts,
	// instead of booting, and the guest continues where SaveState left it
	// once Instance.LoadState saw the load end. Every other field must
	// match the saved guest's, but the paths, the network's backend
	// (user-mode or tap), its forwards and the kernel arguments, which
	// only a boot reads.
	Incoming string
	// AwaitState launches QEMU without booting, to be given a state later
	// (Instance.StartLoad), and with its memory allocated up front: on
	// hosts like a nested cloud VM, where first touching memory is what a
	// restore spends most of its time on, a VM restored ahead of time
	// pays that before the state exists. At most one of Incoming and
	// AwaitState is set.
	AwaitState bool
}

// TapNet is a network device on an existing tap, opened by QEMU through
// /dev/net/tun (no scripts run): the tap's owner must be QEMU's user.
type TapNet struct {
	// Name is the tap: "bgtap-" and 1 to 9 of [a-z0-9], the names the
	// root helper makes.
	Name string
	// MAC is the guest's hardware address, "02:xx:xx:xx:xx:xx" (locally
	// administered, unicast), stable for one VM.
	MAC string
	// Guest is the guest's static network, given to the agent on the
	// kernel command line.
	Guest boot.Network
}

func (t *TapNet) validate() error {
	switch {
	case !api.IsTapName(t.Name):
		return errdefs.Errorf(errdefs.ErrInvalid, "tap name %q is not a banger tap (bgtap- and 1 to 9 of a-z, 0-9)", t.Name)
	case !api.IsGuestMAC(t.MAC):
		return errdefs.Errorf(errdefs.ErrInvalid, "mac %q is not a locally administered unicast address in lowercase (02:xx:xx:xx:xx:xx)", t.MAC)
	case !t.Guest.Address.IsValid() || !t.Guest.Address.Addr().Is4():
		return errdefs.Errorf(errdefs.ErrInvalid, "tap network: the guest's address %q is not IPv4 with a prefix", t.Guest.Address)
	}
	return nil
}

// UserNet is a user-mode network: the guest's network card is a stream
// of frames on layout.NetSocket, which QEMU listens on and the daemon's user
// network (package usernet) connects to. The guest is 10.0.2.15 behind
// a gateway at 10.0.2.2, with DNS at 10.0.2.3, and no root is needed.
type UserNet struct{}

func (s Spec) withDefaults() Spec {
	if s.Name == "" {
		s.Name = filepath.Base(s.Dir)
	}
	if s.DiskFormat == "" {
		s.DiskFormat = "qcow2"
	}
	if s.CPUs == 0 {
		s.CPUs = 1
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = 256
	}
	if s.Accel == "" {
		s.Accel = AccelAuto
	}
	return s
}

func (s Spec) validate() error {
	bad := func(format string, args ...any) error {
		return errdefs.Errorf(errdefs.ErrInvalid, format, args...)
	}
	if s.Incoming != "" && s.AwaitState {
		return bad("a VM loads its state as it starts (Incoming) or later (AwaitState), not both")
	}
	if s.Dir == "" || !filepath.IsAbs(s.Dir) {
		return bad("instance directory %q must be an absolute path", s.Dir)
	}
	if fi, err := os.Stat(s.Dir); err != nil || !fi.IsDir() {
		return bad("instance directory %s does not exist", s.Dir)
	}
	if err := CheckDir(s.Dir); err != nil {
		return errdefs.Errorf(errdefs.ErrInvalid, "%v", err)
	}
	for _, f := range []struct{ what, path string }{{"kernel", s.Kernel}, {"root disk", s.Disk}, {"initrd", s.Initrd}} {
		what, p := f.what, f.path
		if p == "" && what == "initrd" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return bad("%s %q: %v", what, p, err)
		}
		// QEMU's option syntax splits on commas.
		if strings.Contains(p, ",") {
			return bad("%s path %q contains a comma, which QEMU's options cannot carry", what, p)
		}
	}
	if strings.Contains(s.Dir, ",") {
		return bad("instance directory %q contains a comma, which QEMU's options cannot carry", s.Dir)
	}
	if s.CPUs < 1 || s.CPUs > 64 {
		return bad("cpus %d: want 1 to 64", s.CPUs)
	}
	if s.MemoryMiB < 64 {
		return bad("memory %d MiB: want at least 64", s.MemoryMiB)
	}
	switch s.DiskFormat {
	case "qcow2", "raw":
	default:
		return bad("disk format %q: want qcow2 or raw", s.DiskFormat)
	}
	if _, err := ParseAccel(string(s.Accel)); err != nil {
		return err
	}
	for _, f := range s.KernelArgs {
		if strings.ContainsAny(f, " \t\n") {
			return bad("kernel argument %q contains white space", f)
		}
	}
	if s.Incoming != "" {
		if _, err := migrateURI("cat", s.Incoming); err != nil {
			return err
		}
		if _, err := os.Stat(s.Incoming); err != nil {
			return bad("saved state %q: %v", s.Incoming, err)
		}
	}
	if s.Tap != nil {
		if s.Net != nil {
			return bad("a VM has one network: user-mode or a tap, not both")
		}
		if err := s.Tap.validate(); err != nil {
			return err
		}
	}
	return nil
}
