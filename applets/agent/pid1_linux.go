package agent

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"banger/applets/agent/boot"
	"banger/internal/api"
	"banger/logging"
)

// runPID1 runs the stage the agent finds itself in. It returns only if
// the stage fails, and powers the guest off first, so the host sees the VM
// end (with the reason in its console log) instead of a guest that hangs.
func runPID1(build api.Build) int {
	ensureConsole()
	records := newRecordQueue()
	log := newLogger(recordOutput{console: os.Stderr, queue: records})
	log.Debug().Float64("uptime_ms", logging.Millis(uptime())).Msg("agent started")
	sigs := handleSignals(log)
	var err error
	if inInitramfs() {
		err = runInitramfs(log)
	} else {
		err = runSystem(log, build, sigs, records)
	}
	log.Error().Err(err).Msg("agent failed; powering off")
	powerOff(log)
	return exitFailed // not reached: power-off does not return
}

// pid1Signals is what PID 1 does with the signals it gets from inside
// the guest. The kernel spares init from signals it has no handler for,
// but Go's runtime handles SIGTERM, SIGINT, SIGQUIT and others by
// exiting, and the death of PID 1 panics the kernel: they are caught.
// busybox's halt, poweroff and reboot ask init by a signal (SIGUSR1,
// SIGUSR2, SIGTERM; a UPS daemon sends SIGPWR): once the system runs,
// each powers the guest off as the host's request does (a reboot, too:
// QEMU runs with -no-reboot, so the VM stops either way).
type pid1Signals struct {
	mu    sync.Mutex // guards power
	power func(reason string)
}

// handleSignals starts PID 1's signal handling.
func handleSignals(log zerolog.Logger) *pid1Signals {
	p := &pid1Signals{}
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGPWR)
	go func() {
		for s := range sig {
			p.mu.Lock()
			power := p.power
			p.mu.Unlock()
			switch {
			case power != nil && (s == unix.SIGUSR1 || s == unix.SIGUSR2 || s == unix.SIGPWR || s == unix.SIGTERM):
				power(fmt.Sprintf("asked from the guest (%s to PID 1: halt, poweroff or reboot)", unix.SignalName(s.(unix.Signal))))
			default:
				log.Info().Str("signal", s.String()).Msg("signal to PID 1 ignored")
			}
		}
	}()
	return p
}

// onPower makes the power signals call power.
func (p *pid1Signals) onPower(power func(reason string)) {
	p.mu.Lock()
	p.power = power
	p.mu.Unlock()
}

// inInitramfs tells the initramfs from the root disk: it has the manifest,
// and / is the kernel's rootfs (ramfs or tmpfs), never a disk.
func inInitramfs() bool {
	if _, err := os.Stat(boot.ManifestPath); err != nil {
		return false
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return false
	}
	return st.Type == unix.RAMFS_MAGIC || st.Type == unix.TMPFS_MAGIC
}

// ensureConsole gives PID 1 standard input, output and error on
// /dev/console when the kernel could not (a root disk without
// /dev/console): the log must reach the host.
func ensureConsole() {
	if _, err := unix.FcntlInt(2, unix.F_GETFD, 0); err == nil {
		return
	}
	os.MkdirAll("/dev", 0o755)
	unix.Mount("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755")
	fd, err := unix.Open("/dev/console", unix.O_RDWR, 0)
	if err != nil {
		return
	}
	for i := 0; i <= 2; i++ {
		unix.Dup3(fd, i, 0)
	}
	if fd > 2 {
		unix.Close(fd)
	}
}

// mountSpec is one file system PID 1 mounts.
type mountSpec struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	mode                   os.FileMode // of the target when it has to be made
}

// earlyMounts are what both stages need: the kernel's interfaces.
func earlyMounts() []mountSpec {
	return []mountSpec{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
	}
}

// systemMounts are what a running system expects besides.
func systemMounts() []mountSpec {
	return []mountSpec{
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666", 0o755},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	}
}

// mountAll mounts each spec whose target is not a mount point already
// (the initramfs moved /proc, /sys and /dev over; a kernel booted without
// one mounted nothing).
func mountAll(specs []mountSpec) error {
	mounted := mountPoints()
	for _, m := range specs {
		if mounted[m.target] {
			continue
		}
		if err := os.MkdirAll(m.target, m.mode); err != nil {
			return fmt.Errorf("mount %s: %w", m.target, err)
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
		mounted[m.target] = true
		if m.target == "/proc" {
			// Now the kernel's own mounts can be read: booted without an
			// initramfs, it mounted /dev (devtmpfs.mount) before us.
			mounted = mountPoints()
		}
	}
	return nil
}

// mountPoints reads the mount points from /proc/self/mountinfo; before
// /proc is mounted there are none to read, and none but / exist.
func mountPoints() map[string]bool {
	mp := map[string]bool{}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return mp
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			mp[unescapeMountinfo(f[4])] = true
		}
	}
	return mp
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// readCmdline parses /proc/cmdline.
func readCmdline() (boot.Cmdline, error) {
	data, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return nil, fmt.Errorf("read the kernel command line: %w", err)
	}
	return boot.ParseCmdline(string(data)), nil
}

// waitPath waits, boundedly, for a device node the kernel creates as a
// driver probes (the root disk, the network card). With the drivers
// loaded before, it is usually there at once.
func waitPath(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := os.Stat(path)
		if err == nil || !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %s", path, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// powerOff syncs the disks and powers the guest off; QEMU then exits.
func powerOff(log zerolog.Logger) {
	unix.Sync()
	// A read-only remount makes the next boot's mount clean; it fails
	// while files are open for writing, and the journal copes then.
	unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	log.Error().Err(err).Msg("power off failed; halting")
	for {
		// PID 1 must not exit: the kernel would panic.
		time.Sleep(time.Hour)
	}
}

// removeAllOnDevice removes path unless it is on another file system
// than dev (a mount point inside it is left alone).
func removeAllOnDevice(path string, dev uint64) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil || st.Dev != dev {
		return
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		entries, _ := os.ReadDir(path)
		for _, e := range entries {
			removeAllOnDevice(filepath.Join(path, e.Name()), dev)
		}
	}
	os.Remove(path)
}
