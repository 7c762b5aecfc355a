package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"banger/applets/daemon/operation"
	"banger/applets/daemon/state"
	"banger/internal/api"
	"banger/internal/layout"
	"banger/logging"
	"banger/rpc"
)

// Bounds of the VM lifecycle.
const (
	bootTimeout = 3 * time.Minute // TCG boots take seconds; a hang must end
	killTimeout = 15 * time.Second
)

// Service runs the VM methods: the rows in the state database, the
// engine processes and the instance directories, kept in step.
type Service struct {
	db     *state.DB
	ops    *operation.Registry
	engine Engine
	images Images
	root   string         // instance directories: root/<vm id>
	helper Helper         // the root helper: bridges, taps, NAT
	bridge BridgeNet      // where bridged VMs go
	warm   *warmStarts    // nil: every VM boots
	log    zerolog.Logger // for work no call asked for (a VM that ended on its own)
	// dnsOpened is set once this daemon ensured the guests' DNS redirect:
	// it takes it away when it stops (closeDNS).
	dnsOpened atomic.Bool

	mu    sync.Mutex              // guards busy and procs
	busy  map[string]*busyWith    // VM name -> what is being done to it
	procs map[string]*runningProc // VM name -> its running engine process
}

// runningProc is a running VM's engine process and the watch on its exit
// (exit.go), which ends when the process is replaced or forgotten.
type runningProc struct {
	proc    Process
	unwatch chan struct{}
}

func newVMService(db *state.DB, ops *operation.Registry, eng Engine, images Images, root string, helper Helper, bridge BridgeNet) *Service {
	return &Service{db: db, ops: ops, engine: eng, images: images, root: root, helper: helper, bridge: bridge, log: zerolog.Nop(),
		busy: map[string]*busyWith{}, procs: map[string]*runningProc{}}
}

// claim marks the VM busy with what, so two changes of one VM never run at
// once; the second gets a conflict that says what is going on.
func (s *Service) claim(name, what string) (release func(), err error) {
	return s.claimAs(name, what, false)
}

// claimBrief is a claim for a change no one asked for and that takes
// milliseconds (recording that a guest ended on its own): a claim that
// comes meanwhile waits for it instead of failing.
func (s *Service) claimBrief(name, what string) (release func(), err error) {
	return s.claimAs(name, what, true)
}

// briefWait bounds how long a claim waits for a brief one.
const briefWait = 5 * time.Second

func (s *Service) claimAs(name, what string, brief bool) (release func(), err error) {
	deadline := time.Now().Add(briefWait)
	for {
		s.mu.Lock()
		b := s.busy[name]
		if b == nil {
			b = &busyWith{what: what, brief: brief, done: make(chan struct{})}
			s.busy[name] = b
			s.mu.Unlock()
			return func() {
				s.mu.Lock()
				delete(s.busy, name)
				s.mu.Unlock()
				close(b.done)
			}, nil
		}
		s.mu.Unlock()
		if !b.brief || time.Now().After(deadline) {
			return nil, rpc.Errorf(rpc.CodeConflict, "vm %q is busy (%s); wait for that to finish", name, b.what)
		}
		select {
		case <-b.done:
		case <-time.After(time.Until(deadline)):
		}
	}
}

// busyWith is what a VM is busy with, and when it ends.
type busyWith struct {
	what  string
	brief bool          // claimBrief's: others wait for it
	done  chan struct{} // closed when it ends
}

func (s *Service) proc(name string) Process {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.procs[name]; r != nil {
		return r.proc
	}
	return nil
}

// setProc records the running process of a VM (nil: none), closing the
// one it replaces, and watches for its exit.
func (s *Service) setProc(name string, p Process) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.procs[name]
	if old != nil && old.proc == p {
		return
	}
	if old != nil {
		close(old.unwatch)
		old.proc.Close()
		delete(s.procs, name)
	}
	if p != nil {
		r := &runningProc{proc: p, unwatch: make(chan struct{})}
		s.procs[name] = r
		go s.watchExit(name, r)
	}
}

// forgetProc drops p as the VM's process, if it is, without closing it
// (its caller does).
func (s *Service) forgetProc(name string, p Process) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.procs[name]; r != nil && r.proc == p {
		close(r.unwatch)
		delete(s.procs, name)
	}
}

func toAPI(v state.VM) api.VM {
	return api.VM{ID: v.ID, Name: v.Name, Image: v.Image, State: v.State, CPUs: v.CPUs, MemoryMiB: v.MemoryMiB,
		DiskMiB: v.DiskMiB, Network: v.Network, Address: v.Address, DNSName: dnsName(v), Created: v.Created, LastError: v.LastError, PID: v.PID,
		BootID: v.BootID, InstanceDir: v.InstanceDir, Ports: portsToAPI(v.Ports),
		AllowHost: v.AllowHost}
}

// createBegin validates the request, then runs the create as an
// operation whose id is this call's op id.
func (s *Service) CreateBegin(ctx context.Context, p api.VMCreate) (api.Operation, error) {
	p, err := checkCreate(p, "vm-")
	if err != nil {
		return api.Operation{}, err
	}
	if _, err := s.db.GetVM(ctx, p.Name); err == nil {
		return api.Operation{}, rpc.Errorf(rpc.CodeAlreadyExists, "a VM named %q already exists; pick another name or delete it first", p.Name)
	}
	if err := s.images.Exists(ctx, p.Image); err != nil {
		return api.Operation{}, err
	}
	network, err := s.checkNetwork(p)
	if err != nil {
		return api.Operation{}, err
	}
	ports, err := checkPublish(p.Publish)
	if err != nil {
		return api.Operation{}, err
	}
	allowHost, err := checkAllowHost(p.AllowHost)
	if err != nil {
		return api.Operation{}, err
	}
	release, err := s.claim(p.Name, "being created")
	if err != nil {
		return api.Operation{}, err
	}
	id := "vm-" + ulid.Make().String()
	vm := state.VM{ID: id, Name: p.Name, Image: p.Image, CPUs: p.CPUs, MemoryMiB: p.MemoryMiB, DiskMiB: p.DiskMiB,
		State: state.VMCreating, Network: network, InstanceDir: filepath.Join(s.root, id), Ports: ports,
		AllowHost: allowHost}
	var plan *warmPlan
	if !p.Cold && !p.NoStart {
		plan = &warmPlan{}
	}
	return s.ops.Begin(ctx, rpc.OpIDFrom(ctx), api.KindVMCreate, p.Name, func(ctx context.Context, prog *operation.Progress) (any, error) {
		defer release()
		v, err := s.create(ctx, prog, p, vm, plan)
		if err != nil {
			return nil, err
		}
		return v, nil
	}), nil
}

// create runs the steps of a create whose params are checked and whose
// name is claimed: the VM's row, its address and tap when bridged, then
// the first way its guest can come up (start.go).
func (s *Service) create(ctx context.Context, prog *operation.Progress, p api.VMCreate, vm state.VM, plan *warmPlan) (api.VM, error) {
	network := vm.Network
	var img Image
	var saved chan struct{} // closed once the steps (a snapshot's save among them) are over
	steps := []operation.Step{
		{Name: "resolve image", Do: func(ctx context.Context) (err error) {
			img, err = s.images.Resolve(ctx, p.Image)
			if err != nil {
				return err
			}
			s.planWarm(ctx, plan, img, vmShape{CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB, DiskMiB: vm.DiskMiB, Network: vm.Network})
			if s.wantsSave(plan) && s.standbys() > 0 && network == api.NetworkUser {
				// Its standby starts now, while this VM boots.
				saved = make(chan struct{})
				go s.fillStandby(context.WithoutCancel(ctx), plan.key, img, saved)
			}
			return s.db.PutImage(ctx, state.Image{Name: img.Name, Digest: img.Digest, SizeBytes: img.SizeBytes, Created: img.Created, KernelArgs: img.KernelArgs})
		}},
		{Name: "record vm", Do: func(ctx context.Context) error {
			return s.db.CreateVM(ctx, vm)
		}, Undo: func(ctx context.Context) error {
			return s.forgetCreate(ctx, vm.Name)
		}},
	}
	if network == api.NetworkBridge {
		steps = append(steps, s.allocateStep(vm.Name))
	}
	if p.NoStart {
		steps = append(steps, s.overlayStep(vm, &img), operation.Step{Name: "mark stopped", Do: func(ctx context.Context) error {
			_, err := s.db.UpdateVM(ctx, vm.Name, func(v *state.VM) error { v.State = state.VMStopped; return nil })
			return err
		}})
	} else {
		if network == api.NetworkBridge {
			steps = append(steps, s.bridgeSteps(vm.Name)...)
		}
		steps = append(steps, s.startWays(ctx, vm, &img, plan))
	}
	err := prog.Run(ctx, steps)
	if saved != nil {
		close(saved)
	}
	if err != nil {
		return api.VM{}, err
	}
	if plan != nil && plan.usable && s.standbys() > 0 && vm.Network == api.NetworkUser {
		// The next create of this image and shape takes it.
		go s.fillStandby(context.WithoutCancel(ctx), plan.key, img, nil)
	}
	return s.Show(ctx, api.VMRef{Name: vm.Name})
}

// forgetCreate undoes "record vm": the row goes, unless a tap is still
// recorded (its removal failed), in which case the VM stays, failed, so
// that `vm delete` or the next daemon retries rather than leak the tap.
func (s *Service) forgetCreate(ctx context.Context, name string) error {
	vm, err := s.db.GetVM(ctx, name)
	if err != nil {
		return err
	}
	if vm.Tap == "" {
		return s.db.DeleteVM(ctx, name)
	}
	why := fmt.Sprintf("create undone, but tap %s may remain; `banger vm delete %s` removes it", vm.Tap, name)
	s.db.UpdateVM(ctx, name, func(v *state.VM) error { v.State, v.LastError = state.VMFailed, why; return nil })
	return errors.New(why)
}

// checkCreate fills in a create's defaults (a name generated with
// prefix) and validates it.
func checkCreate(p api.VMCreate, prefix string) (api.VMCreate, error) {
	if p.Name == "" {
		p.Name = prefix + strings.ToLower(ulid.Make().String()[20:])
	}
	if p.Image == "" {
		p.Image = api.DefaultImage
	}
	if p.CPUs == 0 {
		p.CPUs = api.DefaultCPUs
	}
	if p.MemoryMiB == 0 {
		p.MemoryMiB = api.DefaultMemoryMiB
	}
	return p, validateCreate(p)
}

func validateCreate(p api.VMCreate) error {
	if err := api.ValidName("vm", p.Name); err != nil {
		return err
	}
	if err := api.ValidName("image", p.Image); err != nil {
		return err
	}
	switch {
	case p.CPUs < 1 || p.CPUs > api.MaxCPUs:
		return rpc.Errorf(rpc.CodeInvalidParams, "cpus %d is out of range (1 to %d)", p.CPUs, api.MaxCPUs)
	case p.MemoryMiB < api.MinMemoryMiB || p.MemoryMiB > api.MaxMemoryMiB:
		return rpc.Errorf(rpc.CodeInvalidParams, "memory %d MiB is out of range (%d MiB to %d GiB)", p.MemoryMiB, api.MinMemoryMiB, api.MaxMemoryMiB>>10)
	case p.DiskMiB < 0 || p.DiskMiB > api.MaxDiskMiB:
		return rpc.Errorf(rpc.CodeInvalidParams, "disk size %d MiB is out of range", p.DiskMiB)
	}
	return nil
}

// markRunning records a VM whose guest is ready.
func (s *Service) markRunning(ctx context.Context, name string, proc Process, bootID string) error {
	if _, err := s.db.UpdateVM(ctx, name, func(v *state.VM) error {
		v.State, v.BootID = state.VMRunning, bootID
		return nil
	}); err != nil {
		return err
	}
	s.setProc(name, proc)
	return nil
}

// startBegin boots a stopped VM as an operation.
func (s *Service) StartBegin(ctx context.Context, p api.VMRef) (api.Operation, error) {
	return s.bootBegin(ctx, p.Name, api.KindVMStart, false)
}

// restartBegin stops a running VM (cleanly) and boots it again.
func (s *Service) RestartBegin(ctx context.Context, p api.VMRef) (api.Operation, error) {
	return s.bootBegin(ctx, p.Name, api.KindVMRestart, true)
}

func (s *Service) bootBegin(ctx context.Context, name, kind string, restart bool) (api.Operation, error) {
	vm, err := s.db.GetVM(ctx, name)
	if err != nil {
		return api.Operation{}, err
	}
	if !restart && vm.State == state.VMRunning {
		return api.Operation{}, rpc.Errorf(rpc.CodeConflict, "vm %q is already running", name)
	}
	release, err := s.claim(name, "being started")
	if err != nil {
		return api.Operation{}, err
	}
	return s.ops.Begin(ctx, rpc.OpIDFrom(ctx), kind, name, func(ctx context.Context, prog *operation.Progress) (any, error) {
		defer release()
		var steps []operation.Step
		if restart && vm.State == state.VMRunning {
			steps = append(steps, operation.Step{Name: "stop", Do: func(ctx context.Context) error {
				_, err := s.stopVM(ctx, name, 30*time.Second)
				return err
			}})
		}
		steps = append(steps, s.bootSteps(name, vm.Network)...)
		if err := prog.Run(ctx, steps); err != nil {
			s.db.UpdateVM(context.WithoutCancel(ctx), name, func(v *state.VM) error { v.LastError = err.Error(); return nil })
			return nil, err
		}
		return s.Show(ctx, api.VMRef{Name: name})
	}), nil
}

func (s *Service) Stop(ctx context.Context, p api.VMStop) (api.VM, error) {
	release, err := s.claim(p.Name, "being stopped")
	if err != nil {
		return api.VM{}, err
	}
	defer release()
	timeout := time.Duration(p.TimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	return s.stopVM(ctx, p.Name, timeout)
}

// stopVM shuts a running VM down, cleanly within timeout, else kills it.
func (s *Service) stopVM(ctx context.Context, name string, timeout time.Duration) (api.VM, error) {
	vm, err := s.db.GetVM(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	proc := s.proc(name)
	if vm.State != state.VMRunning || proc == nil {
		return api.VM{}, rpc.Errorf(rpc.CodeNotRunning, "vm %q is not running (it is %s)", name, vm.State)
	}
	err = logging.Stage(ctx, "shutdown", func(ctx context.Context) error {
		sctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return proc.Shutdown(sctx)
	})
	if err != nil {
		logging.From(ctx).Warn().Err(err).Str("vm", name).Msg("clean shutdown failed; killing")
		if err := proc.Kill(ctx); err != nil {
			return api.VM{}, fmt.Errorf("kill vm %s: %w", name, err)
		}
	}
	return s.markStopped(ctx, name)
}

func (s *Service) markStopped(ctx context.Context, name string) (api.VM, error) {
	return s.markEnded(ctx, name, state.VMStopped, "")
}

// markEnded records a VM whose process is gone as st (stopped, or failed
// with why) and releases what the process held: its runtime files and
// its tap.
func (s *Service) markEnded(ctx context.Context, name, st, why string) (api.VM, error) {
	s.setProc(name, nil)
	vm, err := s.db.UpdateVM(ctx, name, func(v *state.VM) error {
		v.State, v.PID, v.BootID = st, 0, ""
		if why != "" {
			v.LastError = why
		}
		return nil
	})
	if err != nil {
		return toAPI(vm), err
	}
	s.engine.Leftovers(vm.InstanceDir)
	// The tap goes with the process; one the helper cannot remove now
	// stays recorded, for the next stop, delete or daemon start.
	if vm.Tap != "" {
		if err := s.removeTap(ctx, name); err != nil {
			logging.From(ctx).Warn().Err(err).Str("vm", name).Msg("tap not removed; it is removed later")
		} else {
			vm.Tap = ""
		}
	}
	return toAPI(vm), nil
}

func (s *Service) Kill(ctx context.Context, p api.VMRef) (api.VM, error) {
	release, err := s.claim(p.Name, "being killed")
	if err != nil {
		return api.VM{}, err
	}
	defer release()
	vm, err := s.db.GetVM(ctx, p.Name)
	if err != nil {
		return api.VM{}, err
	}
	proc := s.proc(p.Name)
	if vm.State != state.VMRunning || proc == nil {
		return api.VM{}, rpc.Errorf(rpc.CodeNotRunning, "vm %q is not running (it is %s)", p.Name, vm.State)
	}
	if err := proc.Kill(ctx); err != nil {
		return api.VM{}, fmt.Errorf("kill vm %s: %w", p.Name, err)
	}
	return s.markStopped(ctx, p.Name)
}

func (s *Service) Delete(ctx context.Context, p api.VMDelete) (api.VM, error) {
	release, err := s.claim(p.Name, "being deleted")
	if err != nil {
		return api.VM{}, err
	}
	defer release()
	return s.deleteVM(ctx, p.Name)
}

func (s *Service) deleteVM(ctx context.Context, name string) (api.VM, error) {
	vm, err := s.db.GetVM(ctx, name)
	if err != nil {
		return api.VM{}, err
	}
	if proc := s.proc(name); proc != nil {
		// A sandbox is disposable: deleting a running one ends it at once,
		// as multipass delete does (stop first for a clean shutdown).
		if err := proc.Kill(ctx); err != nil {
			return api.VM{}, fmt.Errorf("kill vm %s: %w", name, err)
		}
		s.setProc(name, nil)
	}
	// Tap and files first, row last (it holds the address): a crash in
	// between leaves a row whose tap or directory is gone, which a retry
	// deletes; never a tap or a directory no row points at.
	if err := s.removeTap(ctx, name); err != nil {
		return api.VM{}, err
	}
	if err := os.RemoveAll(vm.InstanceDir); err != nil {
		return api.VM{}, fmt.Errorf("remove %s: %w", vm.InstanceDir, err)
	}
	if err := s.db.DeleteVM(ctx, name); err != nil {
		return api.VM{}, err
	}
	logging.From(ctx).Info().Str("vm", name).Msg("vm deleted")
	return toAPI(vm), nil
}

func (s *Service) Prune(ctx context.Context, _ rpc.NoParams) (api.PruneResult, error) {
	vms, err := s.db.ListVMs(ctx)
	if err != nil {
		return api.PruneResult{}, err
	}
	res := api.PruneResult{Deleted: []string{}}
	for _, vm := range vms {
		if vm.State != state.VMStopped && vm.State != state.VMFailed {
			continue
		}
		release, err := s.claim(vm.Name, "being pruned")
		if err != nil {
			continue
		}
		_, err = s.deleteVM(ctx, vm.Name)
		release()
		if err != nil {
			return res, err
		}
		res.Deleted = append(res.Deleted, vm.Name)
	}
	return res, nil
}

func (s *Service) List(ctx context.Context, _ rpc.NoParams) ([]api.VM, error) {
	vms, err := s.db.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.VM, 0, len(vms))
	for _, v := range vms {
		out = append(out, toAPI(v))
	}
	return out, nil
}

func (s *Service) Show(ctx context.Context, p api.VMRef) (api.VM, error) {
	vm, err := s.db.GetVM(ctx, p.Name)
	return toAPI(vm), err
}

// maxLogChunk bounds one vm.logs answer.
const maxLogChunk = 256 << 10

func (s *Service) Logs(ctx context.Context, p api.VMLogs) (api.VMLogsResult, error) {
	vm, err := s.db.GetVM(ctx, p.Name)
	if err != nil {
		return api.VMLogsResult{}, err
	}
	res := api.VMLogsResult{Next: p.Offset, Running: vm.State == state.VMRunning || vm.State == state.VMStarting}
	f, err := os.Open(filepath.Join(vm.InstanceDir, layout.Console))
	if errors.Is(err, os.ErrNotExist) {
		return res, nil
	}
	if err != nil {
		return res, err
	}
	defer f.Close()
	limit := p.Limit
	if limit <= 0 || limit > maxLogChunk {
		limit = maxLogChunk
	}
	if fi, err := f.Stat(); err == nil && p.Offset > fi.Size() {
		// The console was trimmed (console.go) past where the reader
		// was: go on from the start of what is kept.
		p.Offset = 0
	}
	if data, err := f.Seek(p.Offset, unix.SEEK_DATA); err == nil && data > p.Offset {
		p.Offset = data // a trimmed console's hole
	}
	buf := make([]byte, limit)
	n, err := f.ReadAt(buf, p.Offset)
	if err != nil && !errors.Is(err, io.EOF) {
		return res, err
	}
	res.Data, res.Next = buf[:n], p.Offset+int64(n)
	return res, nil
}

// reconcile runs at daemon start: VMs recorded as running are re-attached
// when their engine process is alive and ours, and marked stopped (their
// runtime leftovers and tap removed) when not; VMs a dead daemon was
// creating are removed with their files and tap, as the create's undo
// would have (interrupted names the VMs whose create operation was
// running); a tap still recorded for a VM that does not run is removed.
// Its helper calls share one op id, logged with the records.
func (s *Service) reconcile(ctx context.Context, interrupted map[string]bool) error {
	vms, err := s.db.ListVMs(ctx)
	if err != nil {
		return err
	}
	opID := rpc.NewOpID()
	ctx = logging.WithOp(rpc.WithOpID(ctx, opID), *logging.From(ctx), opID, "reconcile")
	log := logging.From(ctx)
	defer s.reopenDNS(ctx)
	attached := s.attachAll(ctx, vms, interrupted)
	for _, vm := range vms {
		st := vm.State
		if interrupted[vm.Name] {
			st = state.VMCreating
		}
		switch st {
		case state.VMCreating:
			if proc, err := attached[vm.Name].proc, attached[vm.Name].err; err == nil {
				proc.Kill(ctx)
				proc.Close()
			}
			if err := s.removeTap(ctx, vm.Name); err != nil {
				// Kept, failed, with its tap recorded: vm delete retries.
				why := "its create was interrupted and " + err.Error() + "; `banger vm delete " + vm.Name + "` retries"
				s.db.UpdateVM(ctx, vm.Name, func(v *state.VM) error { v.State, v.LastError = state.VMFailed, why; return nil })
				log.Warn().Err(err).Str("vm", vm.Name).Msg("a VM whose create was interrupted keeps its tap; marked failed")
				continue
			}
			os.RemoveAll(vm.InstanceDir)
			if err := s.db.DeleteVM(ctx, vm.Name); err != nil {
				return err
			}
			log.Warn().Str("vm", vm.Name).Msg("removed a VM whose create was interrupted")
		case state.VMRunning, state.VMStarting, state.VMStopping:
			proc, err := attached[vm.Name].proc, attached[vm.Name].err
			if err == nil && vm.State == state.VMRunning {
				s.setProc(vm.Name, proc)
				log.Info().Str("vm", vm.Name).Int("pid", proc.PID()).Msg("re-attached to a running VM")
				continue
			}
			if err == nil {
				// Half started or half stopped when the daemon died: stop it
				// rather than guess.
				proc.Kill(ctx)
				proc.Close()
			}
			if _, err := s.markStopped(ctx, vm.Name); err != nil {
				return err
			}
			log.Warn().Str("vm", vm.Name).Str("was", vm.State).Msg("VM found not running; marked stopped")
		default:
			if vm.Tap != "" {
				if err := s.removeTap(ctx, vm.Name); err != nil {
					log.Warn().Err(err).Str("vm", vm.Name).Msg("tap of a VM that does not run not removed")
				} else {
					log.Info().Str("vm", vm.Name).Str("tap", vm.Tap).Msg("removed the tap of a VM that does not run")
				}
			}
		}
	}
	return nil
}

// attachConcurrency bounds how many VMs reconcile attaches at once.
const attachConcurrency = 8

type attachResult struct {
	proc Process
	err  error
}

// attachAll attaches to the engine process of every VM that may run (or
// whose create was interrupted), a few at a time: each attach waits for
// its agent's hello, up to seconds for a guest that says none, and one
// after another a host of such guests would hold the daemon's start that
// long each.
func (s *Service) attachAll(ctx context.Context, vms []state.VM, interrupted map[string]bool) map[string]attachResult {
	out := make(map[string]attachResult)
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, attachConcurrency)
	for _, vm := range vms {
		switch {
		case interrupted[vm.Name], vm.State == state.VMCreating, vm.State == state.VMRunning,
			vm.State == state.VMStarting, vm.State == state.VMStopping:
		default:
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			var user *UserNet
			if vm.Network != api.NetworkBridge {
				user = &UserNet{Ports: vm.Ports, AllowHost: vm.AllowHost}
			}
			proc, err := s.engine.Attach(ctx, vm.InstanceDir, user)
			mu.Lock()
			out[vm.Name] = attachResult{proc, err}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// shutdown releases the daemon's handles on running VMs; the VMs keep
// running (they are detached) and the next daemon re-attaches.
func (s *Service) Shutdown() {
	s.closeStandbys(context.Background())
	s.closeDNS()
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, r := range s.procs {
		close(r.unwatch)
		r.proc.Close()
		delete(s.procs, name)
	}
}
