package imagestore

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"
)

// ReplaceAgent makes the image called name anew with another agent
// binary, and otherwise the same: its root filesystem copied (and edited
// as an imported ext4 image is), its kernel, arguments, origin, exec
// defaults and build key; an initrd built for the old agent is built
// again. It takes seconds where building a root again (mmdebstrap) takes
// half a minute. The old image goes only once the new one is made, and
// only if usedBy says no VM uses it (its VMs' disks are overlays on its
// root filesystem); otherwise it stays, and the error is a conflict.
func (s *Store) ReplaceAgent(ctx context.Context, name, agent string, usedBy func(ctx context.Context, image string) ([]string, error)) (Image, error) {
	l, err := waitLock(ctx, s.path(locksDir, name), unix.LOCK_EX)
	if err != nil {
		return Image{}, fmt.Errorf("replace the agent of image %s: %w", name, err)
	}
	defer l.unlock()
	old, err := s.Get(ctx, name)
	if err != nil {
		return Image{}, err
	}
	spec := ImportSpec{Name: name, KernelPath: old.KernelPath, RootfsExt4: old.RootfsPath, AgentBinary: agent,
		KernelArgs: old.KernelArgs, Defaults: old.OCI, Notes: old.Notes, BuildKey: old.BuildKey, KernelOrigin: &old.Kernel.From}
	if old.Initrd != nil && old.Initrd.From.Kind != OriginBuilt {
		spec.InitrdPath = old.InitrdPath // the user's own, not made with the agent
	}
	b, err := s.checkSpec(spec)
	if err != nil {
		return Image{}, err
	}
	b.rootfs.from = old.Rootfs.From
	b.replace = func() error { return s.Delete(ctx, name, usedBy) }
	im, err := s.build(ctx, b)
	if err != nil {
		return Image{}, fmt.Errorf("replace the agent of image %s: %w", name, err)
	}
	return im, nil
}
