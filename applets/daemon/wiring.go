package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"

	"banger/applets/daemon/imagestore"
	"banger/applets/daemon/kernel"
	"banger/applets/daemon/kernel/kernelbuild"
	"banger/applets/daemon/vm"
	"banger/applets/daemon/warm"
	"banger/internal/layout"
	"banger/rpc"
)

// The composition root: the stores under the state directory, the VM
// service on them, and the image methods beside it.

// newVMs opens the kernel, image and snapshot stores under c.StateDir
// and starts the VM service on them (c's stores are filled in here).
func newVMs(ctx context.Context, c vm.Config) (*vm.Service, *imageMethods, error) {
	stateDir := c.StateDir
	self, err := os.Executable()
	if err != nil {
		return nil, nil, fmt.Errorf("find this binary (the guest agent): %w", err)
	}
	kernels, err := kernelbuild.Open(filepath.Join(stateDir, layout.KernelsDir))
	if err != nil {
		return nil, nil, err
	}
	store, err := imagestore.Open(ctx, filepath.Join(stateDir, layout.ImagesDir), imagestore.Options{
		PrepareKernel: prepareKernel,
		BuildInitrd:   initrdBuilder(self, kernels),
		// A build reads the kernel, the agent and the initramfs whole (a
		// few hundred MiB), which Go's runtime would keep for a long
		// while: a daemon runs for weeks.
		Built: debug.FreeOSMemory,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("open the image store: %w", err)
	}
	snaps, err := warm.Open(filepath.Join(stateDir, layout.SnapshotsDir))
	if err != nil {
		return nil, nil, err
	}
	c.Images, c.Kernels, c.Snapshots, c.Agent = store, kernels, snaps, self
	// Hashed once, when first needed: 25 MB is not worth a slower start.
	c.AgentSum = sync.OnceValues(func() (string, error) { return fileSHA256(self) })
	s, err := vm.New(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	return s, &imageMethods{store: store, db: c.DB, agent: self, kernels: kernels, ops: c.Ops, snapshots: snaps, dropStandby: s.DropStandby, standbyStatus: s.StandbyStatus, vms: s, mirror: c.DebianMirror}, nil
}

// fileSHA256 is the hex sha256 of a file's content.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// prepareKernel turns a compressed kernel into the vmlinux banger boots.
func prepareKernel(ctx context.Context, src, dst string) error {
	_, err := kernel.Extract(src, dst)
	return err
}

// initrdBuilder makes an initramfs of the guest modules a kernel keeps as
// modules (Debian's: virtio, ext4), with this binary as the agent; a
// kernel with them built in (banger's own, from the kernel store) needs
// none: the agent boots as the root file system's init.
func initrdBuilder(agent string, kernels *kernelbuild.Store) func(ctx context.Context, kernelPath, dst string) (bool, error) {
	return func(ctx context.Context, kernelPath, dst string) (bool, error) {
		release, err := kernel.Release(kernelPath)
		if err != nil {
			return false, fmt.Errorf("read the kernel's release: %w", err)
		}
		if kernels.Contains(kernelPath) {
			// Everything it needs is built in, and the agent, as the root
			// file system's init, mounts what an initramfs would have:
			// no initramfs to unpack at every boot.
			return false, nil
		}
		modules := filepath.Join("/lib/modules", release)
		ix, err := kernel.ReadModuleIndex(modules)
		if err != nil {
			return false, rpc.Errorf(rpc.CodeUnavailable, "the modules of kernel %s are not in %s (install its linux-image package): %v", release, modules, err)
		}
		mods, err := ix.Resolve(kernel.GuestModules())
		if err != nil {
			return false, err
		}
		if len(mods) == 0 {
			return false, nil
		}
		_, err = kernel.WriteInitramfs(dst, kernel.InitramfsSpec{Agent: agent, Modules: mods, ModulesDir: modules, Release: release})
		return err == nil, err
	}
}
