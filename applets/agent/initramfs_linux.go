package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"banger/applets/agent/boot"
	"banger/logging"
)

// rootWait bounds the wait for the root disk to appear.
const rootWait = 10 * time.Second

// newRoot is where the initramfs mounts the root disk before switching.
const newRoot = "/newroot"

// runInitramfs is the initramfs's /init: load the modules, mount the root
// disk, switch to it and execute its init (normally this binary again, as
// /sbin/banger-agent). It returns only on failure.
func runInitramfs(log zerolog.Logger) error {
	start := time.Now()
	if err := mountAll(earlyMounts()); err != nil {
		return err
	}
	cmd, err := readCmdline()
	if err != nil {
		return err
	}
	var m boot.Manifest
	data, err := os.ReadFile(boot.ManifestPath)
	if err != nil {
		return fmt.Errorf("read the initramfs manifest: %w", err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("read the initramfs manifest: %w", err)
	}
	if err := loadModules(log, m.Modules); err != nil {
		return err
	}
	modulesDone := time.Since(start)

	dev, fstype := cmd[boot.ParamRoot], cmd[boot.ParamRootFSType]
	if dev == "" {
		dev = "/dev/vda"
	}
	if fstype == "" {
		fstype = "ext4"
	}
	if !strings.HasPrefix(dev, "/dev/") {
		return fmt.Errorf("root=%s: only a /dev/ path is supported", dev)
	}
	var flags uintptr
	if _, ro := cmd["ro"]; ro {
		if _, rw := cmd["rw"]; !rw {
			flags |= unix.MS_RDONLY
		}
	}
	if err := waitPath(dev, rootWait); err != nil {
		return fmt.Errorf("root disk: %w", err)
	}
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, newRoot, fstype, flags, ""); err != nil {
		return fmt.Errorf("mount the root disk %s (%s) on %s: %w", dev, fstype, newRoot, err)
	}
	init := cmd[boot.ParamInit]
	if init == "" {
		init = boot.AgentPath
	}
	if err := unix.Access(filepath.Join(newRoot, init), unix.X_OK); err != nil {
		return fmt.Errorf("the root disk has no executable %s (init=): %w", init, err)
	}
	log.Info().Int("modules", len(m.Modules)).Float64("modules_ms", logging.Millis(modulesDone)).
		Str("root", dev).Str("init", init).Float64("duration_ms", logging.Millis(time.Since(start))).
		Msg("initramfs done; switching root")
	return switchRoot(init)
}

// loadModules loads the manifest's modules in order. A module the kernel
// already has (built in, or loaded as a dependency) is fine; a failed
// optional one is logged.
func loadModules(log zerolog.Logger, mods []boot.Module) error {
	for _, mod := range mods {
		start := time.Now()
		err := loadModule(mod.File)
		log.Debug().Str("module", mod.Name).Err(err).Float64("duration_ms", logging.Millis(time.Since(start))).Msg("kernel module")
		switch {
		case err == nil, errors.Is(err, unix.EEXIST):
		case mod.Optional:
			log.Info().Str("module", mod.Name).Err(err).Msg("optional kernel module not loaded")
		default:
			return fmt.Errorf("load kernel module %s: %w", mod.Name, err)
		}
	}
	return nil
}

func loadModule(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.FinitModule(int(f.Fd()), "", 0)
}

// switchRoot moves the kernel file systems onto the new root, frees the
// initramfs's files, makes the new root / and executes init there: what
// busybox's switch_root does. On success it does not return.
func switchRoot(init string) error {
	for _, m := range earlyMounts() {
		target := filepath.Join(newRoot, m.target)
		// The image's root usually has these directories; a root built
		// from a bare directory may not, and it is the VM's own writable
		// layer, so make them.
		if err := os.MkdirAll(target, m.mode); err != nil {
			return fmt.Errorf("switch root: %w", err)
		}
		if err := unix.Mount(m.target, target, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("switch root: move %s: %w", m.target, err)
		}
	}
	// The initramfs stays in memory until its files are gone; the new
	// root is mounted inside it and is left alone.
	var st unix.Stat_t
	if err := unix.Stat("/", &st); err == nil {
		for _, p := range []string{boot.Init, filepath.Dir(boot.ManifestPath)} {
			removeAllOnDevice(p, st.Dev)
		}
	}
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switch root: move %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switch root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	env := append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	if err := unix.Exec(init, []string{init}, env); err != nil {
		return fmt.Errorf("execute %s on the root disk: %w", init, err)
	}
	return nil
}
