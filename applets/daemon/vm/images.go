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

// storeImages is the Images of the image store; the built-in images
// (default and tiny) are made on first use.
type storeImages struct {
	store   *imagestore.Store
	agent   string             // this binary, placed into images
	kernels *kernelbuild.Store // a built default kernel is the built-in images'
	mirror  string             // the Debian mirror of the default image; "" is Debian's
	// agentSum is the sha256 of agent, as image manifests record it.
	agentSum func() (string, error)
	// usedBy lists the VMs of an image.
	usedBy func(ctx context.Context, image string) ([]string, error)

	builtinMu sync.Mutex // one check-and-rebuild of a built-in image at a time
}

func (s *storeImages) Resolve(ctx context.Context, name string) (Image, error) {
	var img imagestore.Image
	var err error
	if isBuiltin(name) {
		img, err = s.ensureBuiltin(ctx, name)
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

// isBuiltin says whether name is an image banger makes itself on first
// use rather than one a user imports.
func isBuiltin(name string) bool { return name == api.DefaultImage || name == api.TinyImage }

// makeBuiltin makes the built-in image name if there is none, and says
// what kind of root it has (a Debian root for default, busybox for
// tiny). A build's progress goes to the running operation stage's
// detail.
func (s *storeImages) makeBuiltin(ctx context.Context, name string) (imagestore.Image, string, error) {
	kernel := DefaultImageKernel(s.kernels)
	if name == api.TinyImage {
		img, err := s.store.EnsureTiny(ctx, imagestore.TinySpec{AgentBinary: s.agent, Kernel: kernel})
		return img, imagestore.OriginBusybox, err
	}
	spec := s.debianSpec(name)
	spec.Kernel, spec.Detail = kernel, operation.DetailOf(ctx)
	img, err := s.store.EnsureDebian(ctx, spec)
	return img, imagestore.OriginDebian, err
}

// debianSpec is the recipe of the default image.
func (s *storeImages) debianSpec(name string) imagestore.DebianSpec {
	return imagestore.DebianSpec{Name: name, Packages: imagestore.DefaultPackages, Mirror: s.mirror, AgentBinary: s.agent}
}

// ensureBuiltin returns the built-in image name, made anew when it is
// stale and no VM uses it: when it carries another banger than this one
// (a guest must run the agent its daemon speaks to: an upgrade adds
// methods, such as the warm starts' agent.resume), or when it is not the
// kind of root it now is (an older banger's busybox default image). An
// image a user imported under a built-in name is theirs, never remade.
func (s *storeImages) ensureBuiltin(ctx context.Context, name string) (imagestore.Image, error) {
	s.builtinMu.Lock()
	defer s.builtinMu.Unlock()
	img, kind, err := s.makeBuiltin(ctx, name)
	if err != nil || s.agentSum == nil || s.usedBy == nil {
		return img, err
	}
	if from := img.Rootfs.From.Kind; from != imagestore.OriginBusybox && from != imagestore.OriginDebian {
		return img, nil // a user's own image under a built-in name: theirs to keep
	}
	sum, err := s.agentSum()
	if err != nil || (img.Agent.SHA256 == sum && img.Rootfs.From.Kind == kind) {
		return img, nil
	}
	log := logging.From(ctx)
	if name == api.DefaultImage && img.Rootfs.From == s.debianSpec(name).Origin() {
		// Only the agent is another banger's: it is replaced in a copy
		// of the root in seconds, not built again in half a minute.
		fresh, err := s.store.ReplaceAgent(ctx, name, s.agent, s.usedBy)
		if err != nil {
			log.Warn().Err(err).Str("image", name).Msg("the built-in image carries another banger's agent, and is kept: VMs use it")
			return img, nil
		}
		log.Info().Str("image", name).Str("was", img.Agent.SHA256).Str("now", sum).Msg("built-in image given this banger's agent")
		return fresh, nil
	}
	if err := s.store.Delete(ctx, img.Name, s.usedBy); err != nil {
		log.Warn().Err(err).Str("image", name).Msg("the built-in image is stale (another banger's agent, or an older recipe), and is kept: VMs use it")
		return img, nil
	}
	log.Info().Str("image", name).Str("was", img.Agent.SHA256).Str("now", sum).Str("root", img.Rootfs.From.Kind).Msg("built-in image made anew: it carried another banger's agent or an older recipe")
	img, _, err = s.makeBuiltin(ctx, name)
	return img, err
}

func (s *storeImages) Overlay(ctx context.Context, img Image, dst string, diskMiB int) error {
	return s.store.Overlay(ctx, img.Name, dst, diskMiB)
}

// ExecDefaults reads them from the image's manifest; the built-in images
// have none, and are not read (nor made) for them.
func (s *storeImages) ExecDefaults(ctx context.Context, name string) (api.OCIImage, error) {
	if isBuiltin(name) {
		return api.OCIImage{}, nil
	}
	img, err := s.store.Get(ctx, name)
	if err != nil || img.OCI == nil {
		return api.OCIImage{}, err
	}
	return *img.OCI, nil
}

// Exists reports whether an image is known, without making a built-in one.
func (s *storeImages) Exists(ctx context.Context, name string) error {
	if isBuiltin(name) {
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
	// DebianMirror is the mirror the default image is built from; ""
	// is deb.debian.org.
	DebianMirror string
}

// New is the VM service of a daemon on its engine, with the VMs a
// previous daemon left reconciled and its standbys swept.
func New(ctx context.Context, c Config) (*Service, error) {
	images := &storeImages{store: c.Images, agent: c.Agent, kernels: c.Kernels, mirror: c.DebianMirror, agentSum: c.AgentSum, usedBy: c.DB.ImageUsers}
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

// DefaultImageKernel is the kernel the built-in images are made with,
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
