package daemon

import (
	"context"
	"fmt"

	"banger/applets/daemon/imagestore"
	"banger/applets/daemon/operation"
	"banger/internal/api"
	"banger/rpc"
)

// commitBegin answers image.commit.begin: the VM's disk becomes a new
// image, booting its image's kernel with its image's arguments and
// defaults, and carrying this banger's agent. A bad name, a name taken
// or a VM that is not there is refused at once, before the operation.
func (m *imageMethods) commitBegin(ctx context.Context, p api.ImageCommit) (api.Operation, error) {
	if err := api.ValidName("image", p.Name); err != nil {
		return api.Operation{}, err
	}
	if _, err := m.db.GetVM(ctx, p.VM); err != nil {
		return api.Operation{}, err
	}
	if _, err := m.store.Get(ctx, p.Name); err == nil {
		return api.Operation{}, nameTaken(rpc.Errorf(rpc.CodeAlreadyExists, "image %s already exists", p.Name), p.Name)
	}
	return m.ops.Begin(ctx, rpc.OpIDFrom(ctx), api.KindImageCommit, p.Name, func(ctx context.Context, prog *operation.Progress) (any, error) {
		var im api.Image
		err := prog.Run(ctx, []operation.Step{{Name: "commit", Do: func(ctx context.Context) error {
			return m.vms.DiskAtRest(ctx, p.VM, func(ctx context.Context, disk, image string) (err error) {
				im, err = m.commitDisk(ctx, commitSpec{name: p.Name, vm: p.VM, disk: disk, image: image})
				return err
			})
		}}})
		return im, err
	}), nil
}

// commitSpec is a VM's disk to import as an image.
type commitSpec struct {
	name, vm, disk string
	image          string // the VM's image
	key            string // a build's content key; "" for a commit
	note           string // what the image is, beyond its VM
}

// commitDisk imports a VM's disk as an image, with the rest of the image
// from the VM's own image.
func (m *imageMethods) commitDisk(ctx context.Context, c commitSpec) (api.Image, error) {
	base, err := m.store.Get(ctx, c.image)
	if err != nil {
		return api.Image{}, fmt.Errorf("read vm %s's image: %w", c.vm, err)
	}
	notes := []string{fmt.Sprintf("committed from vm %s, of image %s (%.19s)", c.vm, base.Name, base.Digest)}
	if c.note != "" {
		notes = []string{c.note}
	}
	return m.doImport(ctx, imagestore.ImportSpec{Name: c.name, KernelPath: base.KernelPath, InitrdPath: base.InitrdPath,
		RootfsDisk: c.disk, Origin: c.vm, AgentBinary: m.agent, KernelArgs: base.KernelArgs, Defaults: base.OCI,
		Notes: notes, BuildKey: c.key, KernelOrigin: &base.Kernel.From})
}
