package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"banger/applets/daemon/imagestore"
	"banger/applets/daemon/kernel/kernelbuild"
	"banger/applets/daemon/operation"
	"banger/internal/api"
	"banger/logging"
	"banger/rpc"
)

// kernelMethods serve kernel.*: building banger's microVM kernel from the
// distribution's source, and the store of built kernels.
type kernelMethods struct {
	store  *kernelbuild.Store
	images *imagestore.Store // to tell which images boot a kernel
	ops    *operation.Registry
	source string // the source tarballs' glob
	// deleteImage deletes an image no VM uses (image.delete), so a new
	// default kernel makes a new default image.
	deleteImage func(ctx context.Context, p api.VMRef) (api.Image, error)

	mu       sync.Mutex // guards building
	building string     // the kernel being built; "" when none
}

func newKernelMethods(images *imageMethods, ops *operation.Registry) *kernelMethods {
	return &kernelMethods{store: images.kernels, images: images.store, ops: ops, source: kernelbuild.SourceGlob,
		deleteImage: images.delete}
}

// buildBegin checks that a build can run here, then builds as an
// operation: unpack, configure, compile (its detail a percentage of the
// objects), install. One build at a time: a second would halve both.
func (m *kernelMethods) buildBegin(ctx context.Context, p api.KernelBuild) (api.Operation, error) {
	if p.Name == "" {
		p.Name = api.DefaultKernel
	}
	if err := api.ValidName("kernel", p.Name); err != nil {
		return api.Operation{}, err
	}
	if p.Jobs < 0 || p.Jobs > 256 {
		return api.Operation{}, rpc.Errorf(rpc.CodeInvalidParams, "jobs %d: want 1 to 256, or 0 for the host's CPUs", p.Jobs)
	}
	if p.Jobs == 0 {
		p.Jobs = runtime.NumCPU()
	}
	if err := kernelbuild.CheckTools(); err != nil {
		return api.Operation{}, err
	}
	src, err := kernelbuild.FindSource(m.source)
	if err != nil {
		return api.Operation{}, err
	}
	m.mu.Lock()
	if m.building != "" {
		m.mu.Unlock()
		return api.Operation{}, rpc.Errorf(rpc.CodeConflict, "kernel %s is being built; wait for that build (one at a time)", m.building)
	}
	m.building = p.Name
	m.mu.Unlock()
	release := func() { m.mu.Lock(); m.building = ""; m.mu.Unlock() }

	estimate := kernelbuild.EstimatedObjects
	if ks, err := m.store.List(); err == nil {
		for _, k := range ks {
			if k.Objects > 0 {
				estimate = k.Objects
			}
		}
	}
	return m.ops.Begin(ctx, rpc.OpIDFrom(ctx), api.KindKernelBuild, p.Name, func(ctx context.Context, prog *operation.Progress) (any, error) {
		defer release()
		started := time.Now()
		logPath := m.store.LogPath(p.Name)
		logFile, err := os.Create(logPath)
		if err != nil {
			return nil, fmt.Errorf("build log: %w", err)
		}
		defer logFile.Close()
		b := &kernelbuild.Build{Source: src, Dir: m.store.BuildDir(p.Name), Jobs: p.Jobs, Log: logFile}
		removeTree := func(ctx context.Context) error { return os.RemoveAll(b.Dir) }
		var objects int
		var k kernelbuild.Kernel
		steps := []operation.Step{
			{Name: "unpack", Do: b.Unpack, Undo: removeTree},
			{Name: "configure", Do: b.Configure},
			{Name: "compile", Do: func(ctx context.Context) (err error) {
				objects, err = b.Compile(ctx, func(n int) {
					pct := min(99, 100*n/max(estimate, 1))
					prog.Detail(fmt.Sprintf("%d%% (%d of ~%d objects)", pct, n, estimate))
				})
				if err != nil {
					return fmt.Errorf("%w (full log: %s)", err, logPath)
				}
				return nil
			}},
			{Name: "install", Do: func(ctx context.Context) (err error) {
				k, err = m.store.Install(ctx, b.Dir, kernelbuild.Manifest{Name: p.Name, Release: b.Release(),
					Source: src, Objects: objects, BuildSeconds: time.Since(started).Seconds()})
				return err
			}},
			{Name: "clean up", Do: removeTree},
		}
		if p.Name == api.DefaultKernel {
			steps = append(steps, operation.Step{Name: "retire built-in images", Do: func(ctx context.Context) error {
				for _, name := range []string{api.DefaultImage, api.TinyImage} {
					if err := m.retireBuiltinImage(ctx, name); err != nil {
						return err
					}
				}
				return nil
			}})
		}
		if err := prog.Run(ctx, steps); err != nil {
			return nil, err
		}
		logging.From(ctx).Info().Str("kernel", k.Name).Str("release", k.Release).Int("objects", objects).Msg("kernel built")
		return m.toAPI(ctx, k), nil
	}), nil
}

// retireBuiltinImage deletes the built-in image name when it was made
// from another kernel and no VM uses it: the next VM makes it again, from
// the new default kernel. One that VMs use stays (logged): its VMs keep
// it.
func (m *kernelMethods) retireBuiltinImage(ctx context.Context, name string) error {
	im, err := m.images.Get(ctx, name)
	if rpc.CodeOf(err) == rpc.CodeNotFound {
		return nil
	}
	if err != nil {
		return err
	}
	k, err := m.store.Get(api.DefaultKernel)
	if err != nil {
		return err
	}
	if im.Kernel.SHA256 == k.SHA256 {
		return nil
	}
	if m.deleteImage == nil {
		return nil
	}
	if _, err := m.deleteImage(ctx, api.VMRef{Name: name}); err != nil {
		if rpc.CodeOf(err) != rpc.CodeConflict {
			return err
		}
		logging.From(ctx).Warn().Err(err).Str("image", name).Msg("built-in image kept, with its old kernel: VMs use it; delete them and the image to boot the new kernel")
	}
	return nil
}

func (m *kernelMethods) list(ctx context.Context, _ rpc.NoParams) ([]api.Kernel, error) {
	ks, err := m.store.List()
	if err != nil {
		return nil, err
	}
	out := make([]api.Kernel, 0, len(ks))
	for _, k := range ks {
		out = append(out, m.toAPI(ctx, k))
	}
	return out, nil
}

func (m *kernelMethods) show(ctx context.Context, p api.VMRef) (api.Kernel, error) {
	k, err := m.store.Get(p.Name)
	if err != nil {
		return api.Kernel{}, noKernel(err, p.Name)
	}
	return m.toAPI(ctx, k), nil
}

// delete refuses a kernel an image boots (the message names the images).
func (m *kernelMethods) delete(ctx context.Context, p api.VMRef) (api.Kernel, error) {
	k, err := m.store.Get(p.Name)
	if err != nil {
		return api.Kernel{}, noKernel(err, p.Name)
	}
	m.mu.Lock()
	building := m.building == p.Name
	m.mu.Unlock()
	if building {
		return api.Kernel{}, rpc.Errorf(rpc.CodeConflict, "kernel %s is being built; cancel that build first", p.Name)
	}
	users := func(vmlinux string) ([]string, error) { return kernelUsers(ctx, m.images, vmlinux) }
	if err := m.store.Delete(p.Name, users); err != nil {
		return api.Kernel{}, err
	}
	return m.toAPI(ctx, k), nil
}

func (m *kernelMethods) toAPI(ctx context.Context, k kernelbuild.Kernel) api.Kernel {
	users, _ := kernelUsers(ctx, m.images, k.VmlinuxPath)
	return api.Kernel{Name: k.Name, Release: k.Release, Source: k.Source, Created: k.Created, SHA256: k.SHA256,
		SizeBytes: k.SizeBytes, Objects: k.Objects, BuildSeconds: k.BuildSeconds, Vmlinux: k.VmlinuxPath,
		Config: k.ConfigPath, UsedBy: users}
}

// kernelUsers names the images made from the kernel at vmlinux (their
// manifests record where their kernel came from).
func kernelUsers(ctx context.Context, images *imagestore.Store, vmlinux string) ([]string, error) {
	ims, err := images.List(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, im := range ims {
		if filepath.Clean(im.Kernel.From.Path) == filepath.Clean(vmlinux) {
			names = append(names, im.Name)
		}
	}
	return names, nil
}
