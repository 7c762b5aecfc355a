package daemon

import (
	"context"
	"time"

	"banger/applets/daemon/imagestore"
	"banger/applets/daemon/kernel/kernelbuild"
	"banger/applets/daemon/operation"
	"banger/applets/daemon/state"
	"banger/applets/daemon/vm"
	"banger/applets/daemon/warm"
	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/logging"
	"banger/rpc"
)

// imageMethods serve image.*: the image store, with the state database
// as the index VMs refer to.
type imageMethods struct {
	store   *imagestore.Store
	db      *state.DB
	agent   string
	kernels *kernelbuild.Store  // for imports that name a built kernel
	ops     *operation.Registry // image.import.begin's operations
	// snapshots are the images' warm snapshots; nil keeps none.
	snapshots *warm.Store
	// dropStandby discards an image's standby VMs (standby.go);
	// standbyStatus says what they are.
	dropStandby   func(ctx context.Context, image string)
	standbyStatus func(image string) *api.StandbyStatus
	// vms holds VMs' disks still for image.commit, and runs the VMs of
	// image.build.
	vms imageVMs
	// mirror is the Debian mirror of builds on a Debian suite; "" is
	// Debian's.
	mirror string
}

// withWarm adds the image's warm snapshot and standbys to what is
// reported of it.
func (m *imageMethods) withWarm(im api.Image) api.Image {
	if m.snapshots != nil {
		if w, ok := m.snapshots.Get(im.Name); ok {
			im.Warm = vm.ToAPIWarm(w)
		}
	}
	if m.standbyStatus != nil {
		im.Standby = m.standbyStatus(im.Name)
	}
	return im
}

func toAPIImage(im imagestore.Image) api.Image {
	return api.Image{Name: im.Name, Digest: im.Digest, Created: im.Created, SizeBytes: im.SizeBytes,
		RootfsMiB: im.RootfsMiB, KernelArgs: im.KernelArgs, Dir: im.Dir, Notes: im.Notes, Problem: im.Problem, OCI: im.OCI, BuildKey: im.BuildKey}
}

func (m *imageMethods) list(ctx context.Context, _ rpc.NoParams) ([]api.Image, error) {
	ims, err := m.store.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Image, 0, len(ims))
	for _, im := range ims {
		out = append(out, m.withWarm(toAPIImage(im)))
	}
	return out, nil
}

func (m *imageMethods) show(ctx context.Context, p api.VMRef) (api.Image, error) {
	im, err := m.store.Get(ctx, p.Name)
	return m.withWarm(toAPIImage(im)), noImage(err)
}

func (m *imageMethods) importImage(ctx context.Context, p api.ImageImport) (api.Image, error) {
	spec, err := m.importSpec(p)
	if err != nil {
		return api.Image{}, err
	}
	var im api.Image
	err = logging.Stage(ctx, "import image", func(ctx context.Context) (err error) {
		im, err = m.doImport(ctx, spec)
		return err
	})
	return im, err
}

// importBegin is importImage as an operation of one stage, "import",
// whose detail is the bytes of an OCI image's layers read so far: a
// registry's image takes a while, and the user sees it come. A bad
// import is refused at once, before the operation.
func (m *imageMethods) importBegin(ctx context.Context, p api.ImageImport) (api.Operation, error) {
	spec, err := m.importSpec(p)
	if err == nil {
		err = m.store.Check(spec)
	}
	if err != nil {
		return api.Operation{}, nameTaken(err, p.Name)
	}
	return m.ops.Begin(ctx, rpc.OpIDFrom(ctx), api.KindImageImport, p.Name, func(ctx context.Context, prog *operation.Progress) (any, error) {
		spec.Progress = byteProgress(prog)
		var im api.Image
		err := prog.Run(ctx, []operation.Step{{Name: "import", Do: func(ctx context.Context) (err error) {
			im, err = m.doImport(ctx, spec)
			return err
		}}})
		return im, err
	}), nil
}

// byteProgress is an import's Progress as the stage's detail, at most
// ten times a second ("12.0 MiB of 40.3 MiB").
func byteProgress(prog *operation.Progress) imagestore.Progress {
	var last time.Time
	return func(done, total int64) {
		if now := time.Now(); done == total || now.Sub(last) >= 100*time.Millisecond {
			last = now
			prog.Detail(api.HumanBytes(done) + " of " + api.HumanBytes(total))
		}
	}
}

// importSpec is the store's import of p, with the kernel file it boots.
func (m *imageMethods) importSpec(p api.ImageImport) (imagestore.ImportSpec, error) {
	kernel, err := m.importKernel(p)
	return imagestore.ImportSpec{Name: p.Name, KernelPath: kernel, InitrdPath: p.Initrd,
		RootfsDir: p.RootfsDir, RootfsTar: p.RootfsTar, RootfsExt4: p.RootfsExt4, OCI: p.OCI,
		AgentBinary: m.agent, KernelArgs: p.KernelArgs, SizeMiB: p.SizeMiB}, err
}

// doImport imports the image spec says and indexes it.
func (m *imageMethods) doImport(ctx context.Context, spec imagestore.ImportSpec) (api.Image, error) {
	im, err := m.store.Import(ctx, spec)
	if err != nil {
		return api.Image{}, nameTaken(err, spec.Name)
	}
	err = m.db.PutImage(ctx, state.Image{Name: im.Name, Digest: im.Digest, SizeBytes: im.SizeBytes, Created: im.Created, KernelArgs: im.KernelArgs})
	return toAPIImage(im), err
}

// nameTaken advises what to do when an import's name is taken.
func nameTaken(err error, name string) error {
	return advise(err, errdefs.ErrAlreadyExists, "delete it first (`banger image delete "+name+"`) or choose another name")
}

// importKernel is the kernel file an import boots: the file given, the
// built kernel named, or banger's default kernel (the built default
// kernel when there is one, else the host's, as the default image), so
// an OCI image alone is enough to import.
func (m *imageMethods) importKernel(p api.ImageImport) (string, error) {
	switch {
	case p.KernelName != "" && p.Kernel != "":
		return "", rpc.Errorf(rpc.CodeInvalidParams, "give a kernel file or a kernel name, not both")
	case p.KernelName != "":
		k, err := m.kernels.Get(p.KernelName)
		if err != nil {
			return "", noKernel(err, p.KernelName)
		}
		return k.VmlinuxPath, nil
	case p.Kernel != "":
		return p.Kernel, nil
	}
	if k := vm.DefaultImageKernel(m.kernels); k != "" {
		return k, nil
	}
	return imagestore.HostKernel(imagestore.DefaultBootDir)
}

// delete refuses an image a VM uses (the message names the VMs), then
// removes the files and the index row.
func (m *imageMethods) delete(ctx context.Context, p api.VMRef) (api.Image, error) {
	im, err := m.store.Get(ctx, p.Name)
	if err != nil {
		return api.Image{}, noImage(err)
	}
	if err := m.store.Delete(ctx, p.Name, m.db.ImageUsers); err != nil {
		return api.Image{}, noImage(err)
	}
	if m.dropStandby != nil {
		m.dropStandby(ctx, p.Name)
	}
	if m.snapshots != nil {
		if err := m.snapshots.Delete(p.Name); err != nil {
			return api.Image{}, err
		}
	}
	if err := m.db.DeleteImage(ctx, p.Name); err != nil && rpc.CodeOf(err) != rpc.CodeNotFound {
		return api.Image{}, err
	}
	return toAPIImage(im), nil
}
