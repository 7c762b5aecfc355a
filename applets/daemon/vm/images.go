package vm

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	"banger/applets/daemon/imagestore"
	"banger/applets/daemon/kernel/kernelbuild"
	"banger/applets/daemon/operation"
	"banger/applets/daemon/state"
	"banger/applets/daemon/warm"
	"banger/internal/api"
	"banger/internal/layout"
	"banger/logging"
	"banger/rpc"
)

// storeImages is the Images of the image store; the default image is
// assembled from the host on first use.
type storeImages struct {
	store   *imagestore.Store
	agent   string             // this binary, placed into images
	kernels *kernelbuild.Store // a built default kernel is the default image's
	// agentSum is the sha256 of agent, as image manifests record it.
	agentSum func() (string, error)
	// usedBy lists the VMs of an image.
	usedBy func(ctx context.Context, image string) ([]string, error)

	defaultMu sync.Mutex // one check-and-rebuild of the default image at a time
}

func (s *storeImages) Resolve(ctx context.Context, name string) (Image, error) {
	var img imagestore.Image
	var err error
	if name == api.DefaultImage {
		img, err = s.ensureDefault(ctx)
	} else {
		img, err = s.get(ctx, name)
	}
	if err != nil {
		return Image{}, err
	}
	return Image{Name: img.Name, Digest: img.Digest, SizeBytes: img.SizeBytes, Created: img.Created,
		Kernel: img.KernelPath, Initrd: img.InitrdPath, Rootfs: img.RootfsPath, KernelArgs: img.KernelArgs,
		AgentSHA256: img.Agent.SHA256}, nil
}

// ensureDefault returns the default image, made anew when it carries
// another banger than this one and no VM uses it: a guest must run the
// agent its daemon speaks to (an upgrade adds methods, such as the warm
// starts' agent.resume).
func (s *storeImages) ensureDefault(ctx context.Context) (imagestore.Image, error) {
	s.defaultMu.Lock()
	defer s.defaultMu.Unlock()
	spec := imagestore.DefaultSpec{AgentBinary: s.agent, Kernel: DefaultImageKernel(s.kernels)}
	img, err := s.store.EnsureDefault(ctx, spec)
	if err != nil || s.agentSum == nil || s.usedBy == nil {
		return img, err
	}
	sum, err := s.agentSum()
	if err != nil || img.Agent.SHA256 == sum {
		return img, nil
	}
	log := logging.From(ctx)
	if err := s.store.Delete(ctx, img.Name, s.usedBy); err != nil {
		log.Warn().Err(err).Msg("the default image carries another banger's agent, and is kept: VMs use it")
		return img, nil
	}
	log.Info().Str("was", img.Agent.SHA256).Str("now", sum).Msg("default image made anew: it carried another banger's agent")
	return s.store.EnsureDefault(ctx, spec)
}

func (s *storeImages) Overlay(ctx context.Context, img Image, dst string, diskMiB int) error {
	return s.store.Overlay(ctx, img.Name, dst, diskMiB)
}

// ExecDefaults reads them from the image's manifest; the default image
// has none, and is not read (nor assembled) for them.
func (s *storeImages) ExecDefaults(ctx context.Context, name string) ([]string, string, error) {
	if name == api.DefaultImage {
		return nil, "", nil
	}
	img, err := s.store.Get(ctx, name)
	if err != nil || img.OCI == nil {
		return nil, "", err
	}
	return img.OCI.Env, img.OCI.WorkingDir, nil
}

// Exists reports whether an image is known, without building the default.
func (s *storeImages) Exists(ctx context.Context, name string) error {
	if name == api.DefaultImage {
		return nil
	}
	_, err := s.get(ctx, name)
	return err
}

// get reads an image, with a not-found message that says where to look.
func (s *storeImages) get(ctx context.Context, name string) (imagestore.Image, error) {
	img, err := s.store.Get(ctx, name)
	if rpc.CodeOf(err) == rpc.CodeNotFound {
		err = rpc.Errorf(rpc.CodeNotFound, "image %q not found; `banger image list` shows the images", name)
	}
	return img, err
}

// Config is what the daemon's start gives the VM service: its settings,
// its engine, the stores it has opened, and the VMs a previous daemon
// left.
type Config struct {
	StateDir string // the VMs live under it
	Engine   Engine
	Warm     WarmOptions
	DB       *state.DB
	Ops      *operation.Registry
	Helper   Helper
	Bridge   BridgeNet
	// Images, Kernels and Snapshots are the daemon's stores.
	Images    *imagestore.Store
	Kernels   *kernelbuild.Store
	Snapshots *warm.Store
	// Agent is this binary, the guests' agent; AgentSum its sha256.
	Agent    string
	AgentSum func() (string, error)
	// Interrupted names the creates a previous daemon left half done.
	Interrupted map[string]bool
}

// New is the VM service of a daemon on its engine, with the VMs a
// previous daemon left reconciled and its standbys swept.
func New(ctx context.Context, c Config) (*Service, error) {
	images := &storeImages{store: c.Images, agent: c.Agent, kernels: c.Kernels, agentSum: c.AgentSum, usedBy: c.DB.ImageUsers}
	s := newVMService(c.DB, c.Ops, c.Engine, images, filepath.Join(c.StateDir, layout.VMsDir), c.Helper, c.Bridge)
	s.log = *logging.From(ctx)
	var err error
	if s.warm, err = newWarmStarts(c.Snapshots, c.Warm, c.AgentSum); err != nil {
		return nil, err
	}
	if err := s.reconcile(ctx, c.Interrupted); err != nil {
		return nil, fmt.Errorf("reconcile VMs: %w", err)
	}
	s.sweepStandbys(ctx)
	return s, nil
}

// DefaultImageKernel is the kernel the default image is assembled from,
// and any image imported without one boots: the built kernel named
// api.DefaultKernel when there is one (it boots in half the time of the
// distribution's), else "" for the host's.
func DefaultImageKernel(store *kernelbuild.Store) string {
	if store == nil {
		return ""
	}
	k, err := store.Get(api.DefaultKernel)
	if err != nil {
		return ""
	}
	return k.VmlinuxPath
}
