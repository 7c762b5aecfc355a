package vm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/procfs"

	"banger/applets/daemon/filecopy"
	"banger/applets/daemon/operation"
	"banger/applets/daemon/state"
	"banger/applets/daemon/warm"
	"banger/internal/api"
	"banger/internal/layout"
	"banger/internal/session"
	"banger/logging"
	"banger/rpc"
)

// Warm starts: a VM of an image with a warm snapshot (package warm)
// restores the snapshot instead of booting, and is given its own
// identity; a VM that boots saves one when its image has none that is
// valid. docs/warm-starts.md says what a user sees of it.

// warmStarts is the VM service's snapshot store and policy.
type warmStarts struct {
	store *warm.Store
	// auto saves a snapshot after a boot when the image has no valid
	// one; without it, only image warm saves them.
	auto bool
	// agentSum is the sha256 of this binary: only a guest whose agent
	// is this very banger knows agent.resume as this daemon calls it.
	agentSum func() (string, error)
	// minFree is the host memory, in bytes, a new standby must leave
	// available; memAvailable reads what is available now.
	minFree      int64
	memAvailable func() (int64, error)

	// pools are the standbys kept per snapshot (standby.go).
	pools *standbyPools
}

// WarmOptions are the daemon's warm-start settings.
type WarmOptions struct {
	Auto     bool  // --auto-warm
	Standbys int   // --standbys, per snapshot
	MinFree  int64 // --standby-min-free, bytes; 0 is the default
}

// MaxStandbys bounds --standbys: each holds its guest's memory.
const MaxStandbys = 16

// newWarmStarts is the warm starts of a daemon with options o, reading
// the host's memory from /proc.
func newWarmStarts(store *warm.Store, o WarmOptions, agentSum func() (string, error)) (*warmStarts, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return nil, fmt.Errorf("read the host's memory: %w", err)
	}
	meminfo := func() (procfs.Meminfo, error) {
		m, err := fs.Meminfo()
		if err == nil && (m.MemAvailableBytes == nil || m.MemTotalBytes == nil) {
			err = errors.New("/proc/meminfo has no MemAvailable")
		}
		return m, err
	}
	w := &warmStarts{store: store, auto: o.Auto, agentSum: agentSum, minFree: o.MinFree,
		pools: newStandbyPools(o.Standbys),
		memAvailable: func() (int64, error) {
			m, err := meminfo()
			if err != nil {
				return 0, err
			}
			return int64(*m.MemAvailableBytes), nil
		}}
	if w.minFree == 0 {
		// An eighth of the host, at least 512 MiB: room for the VMs the
		// user runs, the page cache and everything else.
		m, err := meminfo()
		if err != nil {
			return nil, fmt.Errorf("read the host's memory: %w", err)
		}
		w.minFree = max(int64(*m.MemTotalBytes)/8, 512<<20)
	}
	return w, nil
}

// warmPlan is what one create does about warm starts, decided by its
// steps as it goes.
type warmPlan struct {
	key    warm.Key
	usable bool // key is known: the VM may restore, or save
	save   bool // save a snapshot after booting, even when auto is off
}

// planWarm works out the snapshot key of a new VM; a VM that boots cold
// (--cold, or a key that cannot be known) gets no plan.
func (s *Service) planWarm(ctx context.Context, plan *warmPlan, img Image, vm vmShape) {
	if s.warm == nil || plan == nil {
		return
	}
	if sum, err := s.warm.agentSum(); err != nil || sum != img.AgentSHA256 {
		logging.From(ctx).Debug().Err(err).Str("image", img.Name).Msg("no warm start: the image carries another banger's agent")
		return
	}
	key, err := s.warmKey(img, vm)
	if err != nil {
		logging.From(ctx).Debug().Err(err).Msg("no warm start: the snapshot key is unknown")
		return
	}
	plan.key, plan.usable = key, true
}

// vmShape is what of a VM a snapshot must match.
type vmShape struct {
	CPUs, MemoryMiB, DiskMiB int
	Network                  string // the network mode: its state is in the snapshot
}

func (s *Service) warmKey(img Image, vm vmShape) (warm.Key, error) {
	k := warm.Key{Image: img.Name, ImageDigest: img.Digest, Agent: img.AgentSHA256,
		CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB, DiskMiB: vm.DiskMiB}
	if vm.Network == api.NetworkBridge {
		k.Network = vm.Network
	}
	var errs [3]error
	k.Kernel, errs[0] = warm.FileID(img.Kernel)
	k.Initrd, errs[1] = warm.FileID(img.Initrd)
	k.Engine, errs[2] = s.engine.Identity()
	return k, errors.Join(errs[:]...)
}

// canRestore says whether a new VM can restore its image's snapshot.
func (s *Service) canRestore(plan *warmPlan) bool {
	return plan != nil && plan.usable && !plan.save && s.warm.store.Has(plan.key)
}

// checkoutSnapshot makes a restoring VM's disk and memory link from the
// snapshot.
func (s *Service) checkoutSnapshot(ctx context.Context, plan *warmPlan, dir string) error {
	ok, err := s.warm.store.Checkout(plan.key, filepath.Join(dir, layout.Disk), filepath.Join(dir, layout.WarmMemory), filepath.Join(dir, layout.Console))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("image %s has no warm snapshot for this shape any more", plan.key.Image)
	}
	return nil
}

// wantsSave says whether a VM that booted saves a snapshot.
func (s *Service) wantsSave(plan *warmPlan) bool {
	if plan == nil || !plan.usable {
		return false
	}
	return plan.save || s.warm.auto && !s.warm.store.Has(plan.key)
}

// saveStep saves a snapshot of a VM that has just booted: paused, its
// state saved and its disk copied, then running again. A snapshot that
// cannot be saved only costs later VMs their warm start; a VM that
// cannot run again fails the create.
func (s *Service) saveStep(plan *warmPlan, proc *Process, disk func() string) operation.Step {
	return operation.Step{Name: "save warm snapshot", When: func() bool { return s.wantsSave(plan) }, Do: func(ctx context.Context) error {
		primeGuest(ctx, *proc)
		var resumeErr error
		m, err := s.warm.store.Save(ctx, plan.key, func(ctx context.Context, memory, snapDisk string) error {
			err := (*proc).SaveState(ctx, memory)
			if err == nil {
				err = filecopy.New(disk(), snapDisk)
			}
			if err == nil {
				// What the guest said while it booted, for the consoles of
				// the VMs that restore it.
				filecopy.New(filepath.Join(filepath.Dir(disk()), layout.Console), filepath.Join(filepath.Dir(memory), layout.Console))
			}
			resumeErr = (*proc).Continue(context.WithoutCancel(ctx))
			return errors.Join(err, resumeErr)
		})
		if resumeErr != nil {
			return fmt.Errorf("the VM did not run again after its snapshot: %w", resumeErr)
		}
		log := logging.From(ctx)
		if err != nil {
			if plan.save {
				return err
			}
			log.Warn().Err(err).Str("image", plan.key.Image).Msg("warm snapshot not saved; the next VM boots")
			return nil
		}
		log.Info().Str("image", plan.key.Image).Int64("memory_bytes", m.MemoryBytes).Int64("disk_bytes", m.DiskBytes).Msg("warm snapshot saved")
		return nil
	}}
}

// primeGuest runs a shell once in a guest about to be saved, so the
// snapshot's page cache holds the shell and what a first command needs:
// a restored guest then reads none of it from its disk, which under TCG
// costs its first command hundreds of milliseconds. An image without a
// shell is saved as it is.
func primeGuest(ctx context.Context, proc Process) {
	logging.Stage(ctx, "prime guest", func(ctx context.Context) error {
		if _, err := guestRun(ctx, proc, session.Exec{Argv: []string{"sh", "-c", "true"}}, session.Stdio{}); err != nil {
			logging.From(ctx).Debug().Err(err).Msg("guest not primed")
		}
		return nil
	})
}

// newIdentity is a fresh identity for a restored guest.
func newIdentity(hostname string, tap *LaunchTap) (GuestIdentity, error) {
	b := make([]byte, 16+16+64)
	if _, err := rand.Read(b); err != nil {
		return GuestIdentity{}, err
	}
	boot := hex.EncodeToString(b[16:32])
	return GuestIdentity{
		Hostname:  hostname,
		MachineID: hex.EncodeToString(b[:16]),
		BootID:    boot[:8] + "-" + boot[8:12] + "-" + boot[12:16] + "-" + boot[16:20] + "-" + boot[20:],
		Seed:      b[32:],
		Time:      time.Now(),
		Tap:       tap,
	}, nil
}

// WarmBegin saves a warm snapshot of an image as an operation: a VM of
// the given shape boots, its snapshot is saved, and it is deleted.
func (s *Service) WarmBegin(ctx context.Context, p api.ImageWarm) (api.Operation, error) {
	if s.warm == nil {
		return api.Operation{}, rpc.Errorf(rpc.CodeUnavailable, "this daemon keeps no warm snapshots")
	}
	if p.Name == "" {
		return api.Operation{}, rpc.Errorf(rpc.CodeInvalidParams, "which image? give its name")
	}
	c, err := checkCreate(api.VMCreate{Image: p.Name, CPUs: p.CPUs, MemoryMiB: p.MemoryMiB, DiskMiB: p.DiskMiB, Network: api.NetworkUser}, "warm-")
	if err != nil {
		return api.Operation{}, err
	}
	if err := s.images.Exists(ctx, c.Image); err != nil {
		return api.Operation{}, err
	}
	release, err := s.claim(c.Name, "warming image "+c.Image)
	if err != nil {
		return api.Operation{}, err
	}
	id := "vm-" + ulid.Make().String()
	vm := state.VM{ID: id, Name: c.Name, Image: c.Image, CPUs: c.CPUs, MemoryMiB: c.MemoryMiB, DiskMiB: c.DiskMiB,
		State: state.VMCreating, Network: api.NetworkUser, InstanceDir: filepath.Join(s.root, id)}
	return s.ops.Begin(ctx, rpc.OpIDFrom(ctx), api.KindImageWarm, c.Image, func(ctx context.Context, prog *operation.Progress) (any, error) {
		defer release()
		img, err := s.images.Resolve(ctx, c.Image)
		if err != nil {
			return nil, err
		}
		if sum, err := s.warm.agentSum(); err != nil || sum != img.AgentSHA256 {
			return nil, rpc.Errorf(rpc.CodeUnavailable, "image %s carries another banger's agent, which cannot take a restored guest's identity; import it again (or delete the default image) to warm it", c.Image)
		}
		if _, err := s.create(ctx, prog, c, vm, &warmPlan{save: true}); err != nil {
			return nil, err
		}
		err = prog.Run(ctx, []operation.Step{{Name: "delete vm", Do: func(ctx context.Context) error {
			_, err := s.deleteVM(ctx, c.Name)
			return err
		}}})
		if err != nil {
			return nil, err
		}
		m, ok := s.warm.store.Get(c.Image)
		if !ok {
			return nil, fmt.Errorf("the snapshot of %s is gone", c.Image)
		}
		return ToAPIWarm(m), nil
	}), nil
}

func ToAPIWarm(m warm.Manifest) *api.WarmSnapshot {
	return &api.WarmSnapshot{Image: m.Key.Image, Created: m.Created, CPUs: m.Key.CPUs, MemoryMiB: m.Key.MemoryMiB,
		DiskMiB: m.Key.DiskMiB, MemoryBytes: m.MemoryBytes, DiskBytes: m.DiskBytes}
}
