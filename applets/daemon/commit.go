package daemon

import (
	"context"
	"fmt"

	"banger/applets/daemon/imagestore"
	"banger/applets/daemon/operation"
	"banger/internal/api"
	"banger/rpc"
)

// diskAtRest runs fn with a VM's disk held still (vm.Service.DiskAtRest).
type diskAtRest func(ctx context.Context, vm string, fn func(ctx context.Context, disk, image string) error) error

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
			return m.diskAtRest(ctx, p.VM, func(ctx context.Context, disk, image string) (err error) {
				im, err = m.commit(ctx, p, disk, image)
				return err
			})
		}}})
		return im, err
	}), nil
}

// commit imports a VM's disk as the image p names, with the rest of the
// image from the VM's own image.
func (m *imageMethods) commit(ctx context.Context, p api.ImageCommit, disk, image string) (api.Image, error) {
	base, err := m.store.Get(ctx, image)
	if err != nil {
		return api.Image{}, fmt.Errorf("read vm %s's image: %w", p.VM, err)
	}
	return m.doImport(ctx, imagestore.ImportSpec{Name: p.Name, KernelPath: base.KernelPath, InitrdPath: base.InitrdPath,
		RootfsDisk: disk, Origin: p.VM, AgentBinary: m.agent, KernelArgs: base.KernelArgs, Defaults: base.OCI,
		Notes: []string{fmt.Sprintf("committed from vm %s, of image %s (%.19s)", p.VM, base.Name, base.Digest)}})
}
