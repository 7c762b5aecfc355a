package engine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"banger/applets/agent/boot"
	"banger/internal/layout"
)

// buildArgv is QEMU's full command line for spec.
func buildArgv(bin string, spec Spec, accel Accel, tscKHz int) []string {
	dir := spec.Dir
	cpu := "max"
	if accel == AccelKVM {
		cpu = "host"
	}
	argv := []string{bin,
		"-name", spec.Name,
		// microvm describes its virtio-mmio devices in ACPI, which is how
		// a distribution kernel finds them (it lacks
		// VIRTIO_MMIO_CMDLINE_DEVICES); ACPI also gives the guest the
		// power button that system_powerdown presses.
		"-machine", "microvm,acpi=on",
		"-accel", string(accel),
		"-cpu", cpu,
		"-smp", strconv.Itoa(spec.CPUs),
		"-m", strconv.Itoa(spec.MemoryMiB),
		"-nodefaults", "-no-user-config", "-nographic",
		// QEMU runs untrusted guests: its own seccomp filter keeps it from
		// obsolete system calls, from gaining privileges and from changing
		// its scheduling or memory policy. It may still spawn, as the
		// exec: migration of a warm snapshot runs cat.
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=allow,resourcecontrol=deny",
		// A reboot ends QEMU: the VM is stopped, not silently restarted.
		"-no-reboot",
		"-kernel", spec.Kernel,
	}
	if spec.Initrd != "" {
		argv = append(argv, "-initrd", spec.Initrd)
	}
	argv = append(argv,
		"-append", strings.Join(kernelArgs(spec, accel, tscKHz), " "),
		// Appended to, not truncated: a VM's console keeps its earlier
		// boots, and a restored VM's starts with its snapshot's boot.
		"-chardev", "file,id=console,path="+filepath.Join(dir, layout.Console)+",append=on",
		"-serial", "chardev:console",
		"-chardev", "socket,id=qmp,fd=3,server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-drive", "id=root,if=none,file="+spec.Disk+",format="+spec.DiskFormat+",discard=unmap",
		"-device", "virtio-blk-device,drive=root",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,fd=4,server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name="+boot.PortName,
		// Entropy, so the guest's getrandom is not starved at boot.
		"-device", "virtio-rng-device",
	)
	if spec.Net != nil {
		// QEMU listens (fd 5) and takes a new connection when one ends,
		// so a restarted daemon connects its network again.
		argv = append(argv,
			"-netdev", "stream,id="+netdevID+",server=on,addr.type=fd,addr.str=5",
			"-device", "virtio-net-device,netdev="+netdevID)
	}
	if spec.Incoming != "" {
		// Loaded as QEMU starts, not after a QMP round trip.
		uri, _ := migrateURI("cat", spec.Incoming) // validated
		argv = append(argv, "-incoming", uri)
	}
	if spec.AwaitState {
		argv = append(argv, "-incoming", "defer", "-mem-prealloc")
	}
	if spec.Tap != nil {
		// script=no, downscript=no: QEMU opens the tap the helper made
		// and configures nothing on the host.
		argv = append(argv,
			"-netdev", "tap,id="+netdevID+",ifname="+spec.Tap.Name+",script=no,downscript=no",
			"-device", "virtio-net-device,netdev="+netdevID+",mac="+spec.Tap.MAC)
	}
	return argv
}

// netdevID names the guest's network card's backend.
const netdevID = "net0"

// kernelArgs is the guest's kernel command line.
func kernelArgs(spec Spec, accel Accel, tscKHz int) []string {
	args := []string{
		"console=ttyS0",
		// A panic reboots at once, and a reboot ends QEMU (-no-reboot):
		// a broken guest shows up as an exited VM, not a hung one.
		"panic=-1",
		boot.ParamRoot + "=/dev/vda", "rw", boot.ParamRootFSType + "=ext4",
		boot.ParamInit + "=" + boot.AgentPath,
	}
	if spec.Initrd != "" {
		args = append(args, boot.InitrdArgs()...)
	}
	if accel == AccelTCG {
		// Under TCG, microvm's TSC calibration fails in 8-20 % of boots
		// and, with no other timer to fall back on, the boot hangs.
		args = append(args, "tsc_early_khz="+strconv.Itoa(tscKHz))
	}
	if spec.Net != nil {
		args = append(args, boot.UserNetwork().Args()...)
	}
	if spec.Tap != nil {
		args = append(args, spec.Tap.Guest.Args()...)
	}
	return append(args, spec.KernelArgs...)
}

// hostTSCkHz is the first "cpu MHz" of /proc/cpuinfo, in kHz.
func hostTSCkHz() (int, error) {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0, fmt.Errorf("read the host's TSC frequency: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 {
			return 0, fmt.Errorf("read the host's TSC frequency: cpu MHz %q", strings.TrimSpace(v))
		}
		return int(mhz*1000 + 0.5), nil
	}
	return 0, errors.New("read the host's TSC frequency: /proc/cpuinfo has no \"cpu MHz\"")
}

// accelOf reads the accelerator from a recorded argv.
func accelOf(argv []string) Accel {
	if i := slices.Index(argv, "-accel"); i >= 0 && i+1 < len(argv) {
		return Accel(argv[i+1])
	}
	return ""
}
