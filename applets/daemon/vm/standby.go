package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"banger/applets/daemon/state"
	"banger/applets/daemon/warm"
	"banger/internal/api"
	"banger/internal/layout"
	"banger/logging"
)

// Standbys: for each image with a warm snapshot, the daemon keeps a few
// VM processes (the daemon's --standbys, one by default) restored from it
// ahead of time and paused (QEMU started, the state loaded, the guest run
// once to warm QEMU's translation of it). A create of that image and
// shape takes one instead of launching QEMU and loading the state, which
// are most of a restore's time, and the daemon makes the next. A standby
// costs its guest's memory, allocated up front, and no CPU; one is made
// only while the host has that memory to spare (standbyFits). User-mode
// networking only: a bridged VM's tap is its own from launch.
//
// A standby may wait for hours: nothing the daemon holds open to it times
// out while it is paused (agentlink.MuxConfig). One whose QEMU exits
// while it waits is replaced at once; one that fails its check when a
// create takes it (Process.CheckStandby) is discarded, and the create
// restores instead (start.go).

// standbyWait bounds how long a create waits for a standby on its way
// (with its snapshot saved, one is ready in well under that; a restore
// without one can take as long).
const standbyWait = 2 * time.Second

// standbyCheckTimeout bounds a standby's check: a healthy one answers in
// milliseconds, and a create that finds a hung one restores instead.
const standbyCheckTimeout = 2 * time.Second

// standbyAttempts is how many standbys in a row a fill tries to make
// before it leaves the pool empty, standbyRetryPause the pause after the
// first failure (then twice that, ...).
const (
	standbyAttempts   = 3
	standbyRetryPause = time.Second
)

// standbyOverheadMiB is what a standby costs the host beyond its guest's
// memory: QEMU itself and its translation cache, as measured under TCG.
const standbyOverheadMiB = 96

// standby is a VM process restored ahead of time.
type standby struct {
	key  warm.Key
	dir  string // under the standby root, until a create takes it
	proc Process
}

// standbyPool is an image's standbys, all of one key.
type standbyPool struct {
	key   warm.Key
	img   Image
	ready []*standby
	// filling is closed when the filler of this pool ends; nil when none
	// runs. One filler at a time makes the pool's standbys one by one.
	filling chan struct{}
	// skipped says why the last fill made no standby (the host's
	// memory, or the last attempt's error), and when; "" once one was
	// made.
	skipped   string
	skippedAt time.Time
}

// standbyPools are the standbys of every image, one pool per image (an
// image has one snapshot), and the only place they are kept: it owns
// the lock over them. Its methods do the bookkeeping; the processes are
// made, checked and ended by the VM service (makeStandby,
// discardStandby), never under the lock.
type standbyPools struct {
	perImage int // how many to keep per snapshot; 0 keeps none

	mu     sync.Mutex              // guards pools, each pool's fields, and closed
	pools  map[string]*standbyPool // by image
	closed bool                    // the daemon is stopping: make no more
}

func newStandbyPools(perImage int) *standbyPools {
	return &standbyPools{perImage: perImage, pools: map[string]*standbyPool{}}
}

// take removes a ready standby of key from its image's pool, or returns
// nil. Standbys of another key (another shape, or a snapshot since
// replaced) are taken out as stale, for the caller to discard. When none
// is ready but one is on its way and wait says it is worth it, take
// waits up to standbyWait for it.
func (ps *standbyPools) take(ctx context.Context, key warm.Key, wait func() bool) (sb *standby, stale []*standby) {
	ps.mu.Lock()
	pool := ps.pools[key.Image]
	if pool != nil && pool.key != key {
		stale, pool.ready = pool.ready, nil
		ps.mu.Unlock()
		return nil, stale
	}
	onItsWay := pool != nil && len(pool.ready) == 0 && pool.filling != nil
	ps.mu.Unlock()
	if onItsWay && wait() {
		for deadline := time.Now().Add(standbyWait); time.Now().Before(deadline) && ctx.Err() == nil; {
			ps.mu.Lock()
			waiting := len(pool.ready) == 0 && pool.filling != nil
			ps.mu.Unlock()
			if !waiting {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if pool == nil || len(pool.ready) == 0 || pool.key != key {
		return nil, nil
	}
	sb, pool.ready = pool.ready[0], pool.ready[1:]
	return sb, nil
}

// keyOf is the key of image's pool, and whether it has one.
func (ps *standbyPools) keyOf(image string) (warm.Key, bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if p := ps.pools[image]; p != nil {
		return p.key, true
	}
	return warm.Key{}, false
}

// startFill makes key's pool the image's (a pool of another key goes:
// its standbys are returned as stale) and marks it filling. ok is false
// when it needs no filler: one runs already (also one of the old key,
// which discards what it makes), it is full, or the daemon is stopping.
// done ends the fill.
func (ps *standbyPools) startFill(key warm.Key, img Image) (pool *standbyPool, stale []*standby, done func(), ok bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	pool = ps.pools[key.Image]
	if pool == nil || pool.key != key {
		if pool != nil {
			if pool.filling != nil {
				return nil, nil, nil, false
			}
			stale = pool.ready
		}
		pool = &standbyPool{key: key, img: img}
		ps.pools[key.Image] = pool
	}
	if pool.filling != nil || ps.closed || len(pool.ready) >= ps.perImage {
		return pool, stale, nil, false
	}
	ch := make(chan struct{})
	pool.filling = ch
	return pool, stale, func() {
		ps.mu.Lock()
		pool.filling = nil
		ps.mu.Unlock()
		close(ch)
	}, true
}

// full says whether pool needs no more standbys: it has enough, it is no
// longer its image's, or the daemon is stopping.
func (ps *standbyPools) full(pool *standbyPool) bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.closed || len(pool.ready) >= ps.perImage || ps.pools[pool.key.Image] != pool
}

// skip records why pool got no standby.
func (ps *standbyPools) skip(pool *standbyPool, why string) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	pool.skipped, pool.skippedAt = why, time.Now()
}

// add puts a new standby in pool, unless the pool is no longer its
// image's or the daemon is stopping (false: discard it).
func (ps *standbyPools) add(pool *standbyPool, sb *standby) bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.closed || ps.pools[pool.key.Image] != pool {
		return false
	}
	pool.ready = append(pool.ready, sb)
	pool.skipped = ""
	return true
}

// remove takes sb out of pool: found is false when it was taken or
// discarded already; refill when the pool is still its image's.
func (ps *standbyPools) remove(pool *standbyPool, sb *standby) (found, refill bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for i, r := range pool.ready {
		if r == sb {
			pool.ready = append(pool.ready[:i:i], pool.ready[i+1:]...)
			return true, !ps.closed && ps.pools[pool.key.Image] == pool
		}
	}
	return false, false
}

// drop removes image's pool and returns its standbys once its filler,
// if one runs, is done (bounded by bootTimeout): one on its way would
// land after the drop.
func (ps *standbyPools) drop(image string) []*standby {
	ps.mu.Lock()
	pool := ps.pools[image]
	delete(ps.pools, image)
	var filling chan struct{}
	if pool != nil {
		filling = pool.filling
	}
	ps.mu.Unlock()
	if pool == nil {
		return nil
	}
	if filling != nil {
		select {
		case <-filling:
		case <-time.After(bootTimeout):
		}
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ready := pool.ready
	pool.ready = nil
	return ready
}

// close makes no more standbys and returns every ready one, once the
// fillers at work are done (bounded by wait): a standby on its way sees
// closed once loaded and discards itself.
func (ps *standbyPools) close(wait time.Duration) []*standby {
	ps.mu.Lock()
	ps.closed = true
	var filling []chan struct{}
	for _, p := range ps.pools {
		if p.filling != nil {
			filling = append(filling, p.filling)
		}
	}
	ps.mu.Unlock()
	for _, ch := range filling {
		select {
		case <-ch:
		case <-time.After(wait):
		}
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var ready []*standby
	for _, p := range ps.pools {
		ready = append(ready, p.ready...)
		p.ready = nil
	}
	return ready
}

// status is what image show and the doctor say of image's standbys.
func (ps *standbyPools) status(image string) *api.StandbyStatus {
	st := &api.StandbyStatus{Want: ps.perImage}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if p := ps.pools[image]; p != nil {
		st.Ready, st.Filling = len(p.ready), p.filling != nil
		for _, sb := range p.ready {
			st.PIDs = append(st.PIDs, sb.proc.PID())
		}
		if p.skipped != "" {
			st.Skipped, st.SkippedAt = p.skipped, p.skippedAt.UTC()
		}
	}
	return st
}

// standbys is how many standbys the daemon keeps per snapshot.
func (s *Service) standbys() int {
	if s.warm == nil {
		return 0
	}
	return s.warm.pools.perImage
}

// standbyRoot is where standbys wait: beside the VMs' directories, on the
// same file system, so a create takes one with a rename.
func (s *Service) standbyRoot() string { return filepath.Join(filepath.Dir(s.root), layout.StandbyDir) }

// takeStandby returns a ready standby of plan's key, out of its pool
// (nil when there is none): the create checks it and moves it into the
// VM's directory (adoptStandby). Standbys of another key are discarded.
// One on its way, with its snapshot saved, is waited for a little
// (without a snapshot, it waits for a VM still booting to save one: not
// worth waiting for).
func (s *Service) takeStandby(ctx context.Context, plan *warmPlan, vm state.VM) *standby {
	if s.standbys() == 0 || plan == nil || !plan.usable || plan.save || vm.Network != api.NetworkUser {
		return nil
	}
	sb, stale := s.warm.pools.take(ctx, plan.key, func() bool { return s.warm.store.Has(plan.key) })
	for _, st := range stale {
		s.discardStandby(ctx, st)
	}
	return sb
}

// fillStandby tops up the standbys of key unless a filler runs for its
// image already. It runs in the background under the op id of the create
// that started it: the create that saves the snapshot, from its start,
// with saved closed once its save is over; or a create that took or
// needed a standby, once done, with saved nil; or the watch of a standby
// that died.
//
// Each process is launched before the state is there, its memory
// allocated (LaunchSpec.AwaitState), then given the snapshot: on this
// kind of host, touching a new process's memory for the first time is
// most of what loading a state costs, and a standby made while the first
// VM of an image boots pays it then.
func (s *Service) fillStandby(ctx context.Context, key warm.Key, img Image, saved <-chan struct{}) {
	w := s.warm
	if old, ok := w.pools.keyOf(key.Image); ok && old != key && saved != nil {
		// The image's snapshot of another shape stays, and its standbys
		// with it, unless this VM's save replaces it.
		select {
		case <-saved:
		case <-ctx.Done():
			return
		}
		saved = nil
		if !w.store.Has(key) {
			return
		}
	}
	pool, stale, done, ok := w.pools.startFill(key, img)
	for _, sb := range stale {
		defer s.discardStandby(ctx, sb)
	}
	if !ok {
		return
	}
	defer done()
	log := logging.From(ctx)
	failed := 0 // attempts in a row that made none
	for !w.pools.full(pool) {
		if why := s.standbyFits(key); why != "" {
			w.pools.skip(pool, why)
			log.Info().Str("image", key.Image).Str("why", why).Msg("standby skipped")
			return
		}
		sb, err := s.makeStandby(ctx, key, img, saved)
		saved = nil
		if errors.Is(err, errNoSnapshot) {
			log.Debug().Err(err).Msg("no standby")
			return
		}
		if err != nil {
			// A host under load can fail one (a guest slow to answer):
			// try again a little later, a few times, before leaving the
			// pool to the next create.
			failed++
			w.pools.skip(pool, "making one failed: "+err.Error())
			log.Warn().Err(err).Int("attempt", failed).Msg("no standby")
			if failed == standbyAttempts {
				return
			}
			time.Sleep(time.Duration(failed) * standbyRetryPause)
			continue
		}
		failed = 0
		if !w.pools.add(pool, sb) {
			s.discardStandby(ctx, sb)
			return
		}
		log.Info().Str("image", key.Image).Int("pid", sb.proc.PID()).Msg("standby ready")
		go s.watchStandby(context.WithoutCancel(ctx), pool, sb)
	}
}

// standbyFits says why the host cannot spare a standby's memory now, or
// "" when it can: the standby's guest memory and QEMU's own must leave the
// daemon's --standby-min-free available for everything else.
func (s *Service) standbyFits(key warm.Key) string {
	avail, err := s.warm.memAvailable()
	if err != nil {
		return "the host's available memory is unknown: " + err.Error()
	}
	need := int64(key.MemoryMiB+standbyOverheadMiB) << 20
	if avail-need < s.warm.minFree {
		return fmt.Sprintf("the host has %d MiB of memory available; a standby of %d MiB would take %d MiB of it and leave less than the %d MiB kept free (bangerd --standby-min-free)",
			avail>>20, key.MemoryMiB, need>>20, s.warm.minFree>>20)
	}
	return ""
}

// makeStandby makes one standby of key: launched, given the snapshot
// (once saved is closed, when it is not nil), run once and paused.
func (s *Service) makeStandby(ctx context.Context, key warm.Key, img Image, saved <-chan struct{}) (*standby, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*bootTimeout)
	defer cancel()
	dir := filepath.Join(s.standbyRoot(), strings.ToLower(ulid.Make().String()))
	sb := &standby{key: key, dir: dir}
	err := logging.Stage(ctx, "make standby", func(ctx context.Context) (err error) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		// A disk for QEMU to open; the snapshot's replaces its content
		// before the state loads.
		disk, mem := filepath.Join(dir, layout.Disk), filepath.Join(dir, layout.WarmMemory)
		if err := s.images.Overlay(ctx, img, disk, key.DiskMiB); err != nil {
			return err
		}
		sb.proc, err = s.engine.Launch(ctx, LaunchSpec{InstanceDir: dir, Kernel: img.Kernel, Initrd: img.Initrd,
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
		ok, err := s.warm.store.Checkout(key, disk, mem, filepath.Join(dir, layout.Console))
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
		// translate while its user waits. The create's resume gives it
		// its own identity.
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
		s.discardStandby(ctx, sb)
		return nil, err
	}
	return sb, nil
}

// errNoSnapshot is a standby's snapshot that was not saved (or is gone).
var errNoSnapshot = errors.New("no snapshot")

// watchStandby replaces a standby whose QEMU exits while it waits in its
// pool (killed, out of memory): the next create then still finds one.
func (s *Service) watchStandby(ctx context.Context, pool *standbyPool, sb *standby) {
	<-sb.proc.Exited()
	found, refill := s.warm.pools.remove(pool, sb)
	if !found {
		return // taken, or discarded
	}
	logging.From(ctx).Warn().Str("image", pool.key.Image).Int("pid", sb.proc.PID()).Msg("a standby's QEMU exited while it waited; replacing it")
	s.discardStandby(ctx, sb)
	if refill {
		s.fillStandby(ctx, pool.key, pool.img, nil)
	}
}

// discardStandby ends a standby's process and removes its directory.
func (s *Service) discardStandby(ctx context.Context, sb *standby) {
	if sb.proc != nil {
		sb.proc.Kill(ctx)
		sb.proc.Close()
	}
	os.RemoveAll(sb.dir)
}

// DropStandby discards the standbys of an image (deleted, or its snapshot
// replaced).
func (s *Service) DropStandby(ctx context.Context, image string) {
	if s.warm == nil {
		return
	}
	for _, sb := range s.warm.pools.drop(image) {
		s.discardStandby(ctx, sb)
	}
}

// closeStandbys discards every standby, at shutdown: they are cheap to
// make again, and a process nobody will take is memory for nothing. The
// daemon does not exit before a standby on its way is gone too.
func (s *Service) closeStandbys(ctx context.Context) {
	if s.warm == nil {
		return
	}
	for _, sb := range s.warm.pools.close(30 * time.Second) {
		s.discardStandby(ctx, sb)
	}
}

// sweepStandbys ends the standbys a previous daemon left (killed, it
// could not discard them).
func (s *Service) sweepStandbys(ctx context.Context) {
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

// StandbyStatus is what image show and the doctor say of an image's
// standbys.
func (s *Service) StandbyStatus(image string) *api.StandbyStatus {
	if s.warm == nil {
		return nil
	}
	return s.warm.pools.status(image)
}
