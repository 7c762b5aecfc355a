package daemon

import (
	"context"
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
// state loaded, no guest code run). A create of that image and shape
// takes it instead of launching QEMU and loading the state, which are
// most of a restore's time, and the daemon makes the next one. A standby
// costs the memory its guest had touched when it was saved, and no CPU.
// User-mode networking only: a bridged VM's tap is its own from launch.

// standbyWait bounds how long a create waits for a standby on its way.
const standbyWait = time.Second

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
	if filling != nil {
		// One on its way is ready sooner than a restore from scratch
		// would be: wait for it, a little.
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
// its way). It runs in the background, after the create that made the
// snapshot or took the last standby, under that create's op id.
func (s *vmService) fillStandby(ctx context.Context, key warm.Key, img vmImage) {
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
	ctx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	log := logging.From(ctx)
	dir := filepath.Join(s.standbyRoot(), strings.ToLower(ulid.Make().String()))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		log.Warn().Err(err).Msg("no standby")
		return
	}
	disk, mem := filepath.Join(dir, diskFile), filepath.Join(dir, memoryFile)
	ok, err := w.store.Checkout(key, disk, mem, filepath.Join(dir, consoleFile))
	if !ok {
		log.Debug().Err(err).Msg("no standby: no snapshot")
		os.RemoveAll(dir)
		return
	}
	var sb *standby
	err = logging.Stage(ctx, "make standby", func(ctx context.Context) error {
		proc, err := s.engine.Launch(ctx, launchSpec{InstanceDir: dir, Kernel: img.Kernel, Initrd: img.Initrd,
			KernelArgs: img.KernelArgs, Disk: disk, Hostname: "standby", CPUs: key.CPUs, MemoryMiB: key.MemoryMiB, Incoming: mem})
		if err != nil {
			return err
		}
		err = proc.LoadState(ctx, false)
		os.Remove(mem)
		if err != nil {
			proc.Kill(ctx)
			proc.Close()
			return err
		}
		sb = &standby{key: key, dir: dir, proc: proc}
		return nil
	})
	if err != nil {
		log.Warn().Err(err).Msg("no standby")
		os.RemoveAll(dir)
		return
	}
	w.mu.Lock()
	old := w.standbys[key.Image]
	closed := w.closed
	if !closed {
		w.standbys[key.Image] = sb
	}
	w.mu.Unlock()
	if old != nil {
		s.discardStandby(ctx, old)
	}
	if closed {
		s.discardStandby(ctx, sb)
	}
}

// discardStandby ends a standby's process and removes its directory.
func (s *vmService) discardStandby(ctx context.Context, sb *standby) {
	sb.proc.Kill(ctx)
	sb.proc.Close()
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
