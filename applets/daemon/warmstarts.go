package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"banger/applets/agentlink"
	"banger/applets/api"
	"banger/applets/daemon/filecopy"
	"banger/applets/daemon/operation"
	"banger/applets/daemon/state"
	"banger/applets/daemon/warm"
	"banger/applets/session"
	"banger/logging"
	"banger/rpc"
)

// Warm starts: a VM of an image with a warm snapshot (package warm)
// restores the snapshot instead of booting, and is given its own
// identity; a VM that boots saves one when its image has none that is
// valid. README.md, "Warm starts", says what a user sees of it.

// memoryFile is where a restoring VM's instance directory keeps its link
// to the snapshot's memory until the state is loaded.
const memoryFile = "warm.memory"

// warmStarts is the VM service's snapshot store and policy.
type warmStarts struct {
	store *warm.Store
	// auto saves a snapshot after a boot when the image has no valid
	// one; without it, only image warm saves them.
	auto bool
	// agentSum is the sha256 of this binary: only a guest whose agent
	// is this very banger knows agent.resume as this daemon calls it.
	agentSum func() (string, error)
	// standby keeps a VM restored ahead of time per snapshot (standby.go).
	standby bool

	mu       sync.Mutex               // guards standbys, filling and closed
	standbys map[string]*standby      // by image: one snapshot per image
	filling  map[string]chan struct{} // images whose standby is being made; closed when done
	closed   bool                     // the daemon is stopping: make no more
}

// warmPlan is what one create does about warm starts, decided by its
// steps as it goes.
type warmPlan struct {
	key     warm.Key
	usable  bool // key is known: the VM may restore, or save
	save    bool // save a snapshot after booting, even when auto is off
	restore bool // the disk was checked out of a snapshot: restore
	// standby is the process restored ahead of time that the VM took
	// (standby.go): launched and loaded already.
	standby vmProcess
}

func (p *warmPlan) restoring() bool { return p != nil && p.restore }

// planWarm works out the snapshot key of a new VM; a VM that boots cold
// (--cold, or a key that cannot be known) gets no plan.
func (s *vmService) planWarm(ctx context.Context, plan *warmPlan, img vmImage, vm vmShape) {
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
type vmShape struct{ CPUs, MemoryMiB, DiskMiB int }

func (s *vmService) warmKey(img vmImage, vm vmShape) (warm.Key, error) {
	k := warm.Key{Image: img.Name, ImageDigest: img.Digest, Agent: img.AgentSHA256,
		CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB, DiskMiB: vm.DiskMiB}
	var errs [3]error
	k.Kernel, errs[0] = warm.FileID(img.Kernel)
	k.Initrd, errs[1] = warm.FileID(img.Initrd)
	k.Engine, errs[2] = s.engine.Identity()
	return k, errors.Join(errs[:]...)
}

// checkoutDisk makes a restoring VM's disk and memory link from the
// snapshot, and reports whether there was one.
func (s *vmService) checkoutDisk(ctx context.Context, plan *warmPlan, dir string) bool {
	if plan == nil || !plan.usable || plan.save {
		return false
	}
	ok, err := s.warm.store.Checkout(plan.key, filepath.Join(dir, diskFile), filepath.Join(dir, memoryFile), filepath.Join(dir, consoleFile))
	if err != nil {
		logging.From(ctx).Warn().Err(err).Msg("warm snapshot not usable; booting")
		return false
	}
	plan.restore = ok
	return ok
}

// wantsSave says whether a VM that booted saves a snapshot.
func (s *vmService) wantsSave(plan *warmPlan) bool {
	if plan == nil || !plan.usable || plan.restore {
		return false
	}
	return plan.save || s.warm.auto && !s.warm.store.Has(plan.key)
}

// restoreSteps load a checked-out snapshot into the launched process and
// give the guest its identity; they stand in for "wait for agent".
func (s *vmService) restoreSteps(name string, plan *warmPlan, proc *vmProcess, spec *launchSpec) []operation.Step {
	restoring := plan.restoring
	return []operation.Step{
		{Name: "restore", When: restoring, Do: func(ctx context.Context) error {
			err := (*proc).LoadState(ctx, true)
			// The VM has its state, or failed: either way the link goes.
			os.Remove(spec.Incoming)
			if err != nil {
				// Never try this snapshot again: the next VM boots and
				// saves a new one.
				s.warm.store.Delete(plan.key.Image)
				return fmt.Errorf("restore the warm snapshot of %s (removed; the next VM boots): %w", plan.key.Image, err)
			}
			return nil
		}},
		{Name: "resume agent", When: restoring, Do: func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, bootTimeout)
			defer cancel()
			id, err := newIdentity(name, spec.Tap)
			if err != nil {
				return err
			}
			bootID, err := (*proc).Resume(ctx, id)
			if err != nil {
				if errors.Is(err, context.DeadlineExceeded) {
					return rpc.Errorf(rpc.CodeTimeout, "the restored guest's agent did not answer within %s; see `banger vm logs %s`", bootTimeout, name)
				}
				return err
			}
			return s.markRunning(ctx, name, *proc, bootID)
		}},
	}
}

// saveStep saves a snapshot of a VM that has just booted: paused, its
// state saved and its disk copied, then running again. A snapshot that
// cannot be saved only costs later VMs their warm start; a VM that
// cannot run again fails the create.
func (s *vmService) saveStep(plan *warmPlan, proc *vmProcess, disk func() string) operation.Step {
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
				filecopy.New(filepath.Join(filepath.Dir(disk()), consoleFile), filepath.Join(filepath.Dir(memory), warm.ConsoleFile))
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
func primeGuest(ctx context.Context, proc vmProcess) {
	logging.Stage(ctx, "prime guest", func(ctx context.Context) error {
		conn, err := proc.OpenSession(ctx, agentlink.MethodExec, session.Exec{Argv: []string{"sh", "-c", "true"}})
		if err == nil {
			_, err = session.Run(conn, session.Stdio{})
		}
		if err != nil {
			logging.From(ctx).Debug().Err(err).Msg("guest not primed")
		}
		return nil
	})
}

// newIdentity is a fresh identity for a restored guest.
func newIdentity(hostname string, tap *launchTap) (guestIdentity, error) {
	b := make([]byte, 16+16+64)
	if _, err := rand.Read(b); err != nil {
		return guestIdentity{}, err
	}
	boot := hex.EncodeToString(b[16:32])
	return guestIdentity{
		Hostname:  hostname,
		MachineID: hex.EncodeToString(b[:16]),
		BootID:    boot[:8] + "-" + boot[8:12] + "-" + boot[12:16] + "-" + boot[16:20] + "-" + boot[20:],
		Seed:      b[32:],
		Time:      time.Now(),
		Tap:       tap,
	}, nil
}

// warmBegin saves a warm snapshot of an image as an operation: a VM of
// the given shape boots, its snapshot is saved, and it is deleted.
func (s *vmService) warmBegin(ctx context.Context, p api.ImageWarm) (api.Operation, error) {
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
		return toAPIWarm(m), nil
	}), nil
}

func toAPIWarm(m warm.Manifest) *api.WarmSnapshot {
	return &api.WarmSnapshot{Image: m.Key.Image, Created: m.Created, CPUs: m.Key.CPUs, MemoryMiB: m.Key.MemoryMiB,
		DiskMiB: m.Key.DiskMiB, MemoryBytes: m.MemoryBytes, DiskBytes: m.DiskBytes}
}
