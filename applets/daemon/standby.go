package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"

	"banger/applets/api"
	"banger/applets/daemon/state"
	"banger/applets/daemon/warm"
	"banger/logging"
)

// Standbys: for each image with a warm snapshot, the daemon keeps one VM
// process restored from it ahead of time and paused (QEMU started, the
// state loaded, the guest run once to warm QEMU's translation of it). A
// create of that image and shape takes it instead of launching QEMU and
// loading the state, which are most of a restore's time, and the daemon
// makes the next one. A standby costs its guest's memory, and no CPU.
// User-mode networking only: a bridged VM's tap is its own from launch.

// standbyWait bounds how long a create waits for a standby on its way
// (with its snapshot saved, one is ready in well under that; a restore
// without one can take as long).
const standbyWait = 2 * time.Second

// standby is a VM process restored ahead of time.
type standby struct {
	key  warm.Key
	dir  string // under the standby root, until a create takes it
	proc vmProcess
}

// standbyRoot is where standbys wait: beside the VMs' directories, on the
// same file system, so a create takes one with a rename.
func (s *vmService) standbyRoot() string { return filepath.Join(filepath.Dir(s.root), "standby") }

// takeStandby moves the standby of plan's key, if one is ready, into the
// VM's instance directory and returns its process there. A standby of
// another key is discarded.
func (s *vmService) takeStandby(ctx context.Context, plan *warmPlan, vm state.VM) vmProcess {
	w := s.warm
	if w == nil || !w.standby || plan == nil || !plan.usable || plan.save || vm.Network != api.NetworkUser {
		return nil
	}
	w.mu.Lock()
	filling := w.filling[plan.key.Image]
	w.mu.Unlock()
	if filling != nil && w.store.Has(plan.key) {
		// One on its way is ready sooner than a restore from scratch
		// would be: wait for it, a little. (Without a snapshot, it waits
		// for a VM still booting to save one: not worth waiting for.)
		select {
		case <-filling:
		case <-time.After(standbyWait):
		case <-ctx.Done():
		}
	}
	w.mu.Lock()
	sb := w.standbys[plan.key.Image]
	delete(w.standbys, plan.key.Image)
	w.mu.Unlock()
	if sb == nil {
		return nil
	}
	log := logging.From(ctx)
	if sb.key != plan.key {
		s.discardStandby(ctx, sb)
		return nil
	}
	if err := os.Rename(sb.dir, vm.InstanceDir); err != nil {
		log.Warn().Err(err).Msg("standby not taken")
		s.discardStandby(ctx, sb)
		return nil
	}
	// Its sockets and files moved with the directory.
	sb.proc.Moved(vm.InstanceDir)
	return sb.proc
}

// fillStandby makes the standby of key unless there is one (or one on
// its way). It runs in the background under the op id of the create that
// started it: the create that saves the snapshot, from its start, with
// saved closed once its save is over; or the create that took the last
// standby, once done, with saved nil.
//
// The process is launched before the state is there, its memory
// allocated (launchSpec.AwaitState), then given the snapshot: on this
// kind of host, touching a new process's memory for the first time is
// most of what loading a state costs (0.8-1.4 s against 0.1-0.3 s), and a
// standby made while the first VM of an image boots pays it then.
func (s *vmService) fillStandby(ctx context.Context, key warm.Key, img vmImage, saved <-chan struct{}) {
	w := s.warm
	w.mu.Lock()
	if sb := w.standbys[key.Image]; sb != nil && sb.key == key || w.filling[key.Image] != nil || w.closed {
		w.mu.Unlock()
		return
	}
	done := make(chan struct{})
	w.filling[key.Image] = done
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.filling, key.Image)
		w.mu.Unlock()
		close(done)
	}()
	ctx, cancel := context.WithTimeout(ctx, 2*bootTimeout)
	defer cancel()
	log := logging.From(ctx)
	dir := filepath.Join(s.standbyRoot(), strings.ToLower(ulid.Make().String()))
	sb := &standby{key: key, dir: dir}
	err := logging.Stage(ctx, "make standby", func(ctx context.Context) (err error) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		// A disk for QEMU to open; the snapshot's replaces its content
		// before the state loads.
		disk, mem := filepath.Join(dir, diskFile), filepath.Join(dir, memoryFile)
		if err := s.images.Overlay(ctx, img, disk, key.DiskMiB); err != nil {
			return err
		}
		sb.proc, err = s.engine.Launch(ctx, launchSpec{InstanceDir: dir, Kernel: img.Kernel, Initrd: img.Initrd,
			KernelArgs: img.KernelArgs, Disk: disk, Hostname: "standby", CPUs: key.CPUs, MemoryMiB: key.MemoryMiB, AwaitState: true})
		if err != nil {
			return err
		}
		if saved != nil {
			select {
			case <-saved:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		ok, err := w.store.Checkout(key, disk, mem, filepath.Join(dir, consoleFile))
		if !ok {
			return errors.Join(errNoSnapshot, err)
		}
		defer os.Remove(mem)
		if err := sb.proc.StartLoad(ctx, mem); err != nil {
			return err
		}
		if err := sb.proc.LoadState(ctx, true); err != nil {
			return err
		}
		// It runs once, to its agent's hello, a resume as "standby" and a
		// shell, and pauses again: QEMU has then translated the guest
		// code that these run, which a restored guest would otherwise
		// translate while its user waits (~0.2 s for a hello and resume
		// under TCG, ~0.1 s for a first command). The create's resume
		// gives it its own identity.
		id, err := newIdentity("standby", nil)
		if err == nil {
			_, err = sb.proc.Resume(ctx, id)
		}
		if err == nil {
			primeGuest(ctx, sb.proc)
		}
		return errors.Join(err, sb.proc.Pause(ctx))
	})
	if err != nil {
		if errors.Is(err, errNoSnapshot) {
			log.Debug().Err(err).Msg("no standby")
		} else {
			log.Warn().Err(err).Msg("no standby")
		}
		s.discardStandby(ctx, sb)
		return
	}
	w.mu.Lock()
	old := w.standbys[key.Image]
	closed := w.closed
	if !closed {
		w.standbys[key.Image] = sb
	}
	w.mu.Unlock()
	if !closed {
		log.Info().Str("image", key.Image).Int("pid", sb.proc.PID()).Msg("standby ready")
	}
	if old != nil {
		s.discardStandby(ctx, old)
	}
	if closed {
		s.discardStandby(ctx, sb)
	}
}

// errNoSnapshot is a standby's snapshot that was not saved (or is gone).
var errNoSnapshot = errors.New("no snapshot")

// discardStandby ends a standby's process and removes its directory.
func (s *vmService) discardStandby(ctx context.Context, sb *standby) {
	if sb.proc != nil {
		sb.proc.Kill(ctx)
		sb.proc.Close()
	}
	os.RemoveAll(sb.dir)
}

// dropStandby discards the standby of an image (deleted, or its snapshot
// replaced).
func (s *vmService) dropStandby(ctx context.Context, image string) {
	if s.warm == nil {
		return
	}
	// One on its way would land after the drop: wait for it first.
	s.warm.mu.Lock()
	filling := s.warm.filling[image]
	s.warm.mu.Unlock()
	if filling != nil {
		select {
		case <-filling:
		case <-time.After(bootTimeout):
		}
	}
	s.warm.mu.Lock()
	sb := s.warm.standbys[image]
	delete(s.warm.standbys, image)
	s.warm.mu.Unlock()
	if sb != nil {
		s.discardStandby(ctx, sb)
	}
}

// closeStandbys discards every standby, at shutdown: they are cheap to
// make again, and a process nobody will take is memory for nothing.
func (s *vmService) closeStandbys(ctx context.Context) {
	if s.warm == nil {
		return
	}
	s.warm.mu.Lock()
	s.warm.closed = true
	var filling []chan struct{}
	for _, ch := range s.warm.filling {
		filling = append(filling, ch)
	}
	s.warm.mu.Unlock()
	// A standby on its way sees closed once loaded and discards itself;
	// the daemon must not exit before.
	for _, ch := range filling {
		select {
		case <-ch:
		case <-time.After(30 * time.Second):
		}
	}
	s.warm.mu.Lock()
	sbs := s.warm.standbys
	s.warm.standbys = map[string]*standby{}
	s.warm.mu.Unlock()
	for _, sb := range sbs {
		s.discardStandby(ctx, sb)
	}
}

// sweepStandbys ends the standbys a previous daemon left (killed, it
// could not discard them).
func (s *vmService) sweepStandbys(ctx context.Context) {
	entries, _ := os.ReadDir(s.standbyRoot())
	for _, e := range entries {
		dir := filepath.Join(s.standbyRoot(), e.Name())
		if proc, err := s.engine.AttachPaused(ctx, dir); err == nil {
			proc.Kill(ctx)
			proc.Close()
		}
		os.RemoveAll(dir)
	}
}
