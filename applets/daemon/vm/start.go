package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"banger/applets/daemon/operation"
	"banger/applets/daemon/state"
	"banger/internal/api"
	"banger/internal/layout"
	"banger/rpc"
)

// How a VM's guest comes up. A new VM has three ways, fastest first, each
// a named list of steps (Firecracker's SDK keeps its boot and its
// snapshot load as two such lists):
//
//   - standby: take a process restored ahead of time from the image's
//     warm snapshot and paused (standby.go), run it, give it its identity;
//   - restore: copy the snapshot's disk, launch QEMU loading its memory,
//     give the guest its identity (warmstarts.go);
//   - boot: make a disk over the image, launch QEMU, wait for the agent,
//     and save the image's snapshot when it has none.
//
// The warm ways are optimisations, never a point of failure: a way that
// cannot serve (a dead standby, a snapshot that does not load, an agent
// that does not resume) is undone and the next is tried, with a stage and
// a warning that say why (operation.FirstOf). A create fails only when
// its boot fails. A VM that starts again (vm start, restart) has its own
// disk by then, and boots.

// startWays brings a new VM's guest up, the first way that can.
func (s *Service) startWays(ctx context.Context, vm state.VM, img *Image, plan *warmPlan) operation.Step {
	return operation.FirstOf(
		s.standbyWay(ctx, vm, plan),
		s.restoreWay(vm, img, plan),
		s.bootWay(vm, img, plan),
	)
}

// standbyWay takes a standby of the VM's image and shape, if one is ready
// (or on its way: takeStandby waits for it a little).
func (s *Service) standbyWay(ctx context.Context, vm state.VM, plan *warmPlan) operation.Way {
	var sb *standby
	var proc Process
	return operation.Way{Name: "standby",
		Usable: func() bool {
			sb = s.takeStandby(ctx, plan, vm)
			return sb != nil
		},
		Steps: []operation.Step{
			{Name: "take standby", Do: func(ctx context.Context) error {
				var err error
				proc, err = s.adoptStandby(ctx, sb, vm)
				return err
			}, Undo: func(ctx context.Context) error {
				return s.endLaunch(ctx, vm.Name, proc)
			}},
			{Name: "resume agent", Do: func(ctx context.Context) error {
				if err := proc.LoadState(ctx, true); err != nil { // a standby's LoadState with run is its cont
					return err
				}
				return s.resumeGuest(ctx, vm.Name, proc, nil)
			}},
		}}
}

// adoptStandby makes a standby the VM's process, once it passed its
// check: its directory becomes the VM's, and it gets the VM's ports. A
// standby that fails is discarded here (its step has no undo yet).
func (s *Service) adoptStandby(ctx context.Context, sb *standby, vm state.VM) (Process, error) {
	cctx, cancel := context.WithTimeout(ctx, standbyCheckTimeout)
	err := sb.proc.CheckStandby(cctx)
	cancel()
	if err != nil {
		s.discardStandby(ctx, sb)
		return nil, fmt.Errorf("it failed its check: %w", err)
	}
	if err := os.Rename(sb.dir, vm.InstanceDir); err != nil {
		s.discardStandby(ctx, sb)
		return nil, fmt.Errorf("take the standby: %w", err)
	}
	// Its sockets and files moved with the directory.
	sb.proc.Moved(vm.InstanceDir)
	proc := sb.proc
	fail := func(err error) (Process, error) {
		s.endLaunch(ctx, vm.Name, proc)
		os.RemoveAll(vm.InstanceDir)
		return nil, err
	}
	if _, err := s.db.UpdateVM(ctx, vm.Name, func(v *state.VM) error {
		v.State, v.LastError, v.PID = state.VMStarting, "", proc.PID()
		return nil
	}); err != nil {
		return fail(err)
	}
	if err := proc.AllowHost(vm.AllowHost); err != nil {
		return fail(err)
	}
	for _, f := range vm.Ports {
		if err := proc.AddForward(ctx, f); err != nil {
			return fail(err)
		}
	}
	return proc, nil
}

// restoreWay restores the image's warm snapshot into a new process.
func (s *Service) restoreWay(vm state.VM, img *Image, plan *warmPlan) operation.Way {
	var proc Process
	var spec LaunchSpec
	return operation.Way{Name: "restore",
		Usable: func() bool { return s.canRestore(plan) },
		Steps: []operation.Step{
			{Name: "make disk", Do: func(ctx context.Context) error {
				if err := os.MkdirAll(vm.InstanceDir, 0o700); err != nil {
					return err
				}
				return s.checkoutSnapshot(ctx, plan, vm.InstanceDir)
			}, Undo: func(ctx context.Context) error {
				return os.RemoveAll(vm.InstanceDir)
			}},
			s.restoreLaunchStep(vm.Name, img, &proc, &spec, plan),
			{Name: "restore", Do: func(ctx context.Context) error {
				err := proc.LoadState(ctx, true)
				// The VM has its state, or failed: either way the link goes.
				os.Remove(spec.Incoming)
				if err != nil {
					return s.dropSnapshot(plan, err)
				}
				return nil
			}},
			{Name: "resume agent", Do: func(ctx context.Context) error {
				return s.resumeGuest(ctx, vm.Name, proc, spec.Tap)
			}},
		}}
}

// restoreLaunchStep launches the VM loading the snapshot's state. QEMU
// reads the state as it starts, so a state that does not load can end it
// before the launch returns: that is a failed restore too.
func (s *Service) restoreLaunchStep(name string, img *Image, proc *Process, spec *LaunchSpec, plan *warmPlan) operation.Step {
	step := s.launchStep(name, img, proc, spec, func(spec *LaunchSpec) {
		spec.Incoming = filepath.Join(spec.InstanceDir, layout.WarmMemory)
	})
	launch := step.Do
	step.Do = func(ctx context.Context) error {
		err := launch(ctx)
		if errors.Is(err, ErrExitedAtStart) {
			return s.dropSnapshot(plan, err)
		}
		return err
	}
	return step
}

// dropSnapshot makes sure a snapshot that failed to restore is never
// tried again: the next VM boots and saves a new one.
func (s *Service) dropSnapshot(plan *warmPlan, err error) error {
	s.warm.store.Drop(plan.key)
	return fmt.Errorf("restore the warm snapshot of %s (removed; the next VM boots): %w", plan.key.Image, err)
}

// bootWay boots the VM on a disk of its own over the image, and saves the
// image's snapshot when the plan says to.
func (s *Service) bootWay(vm state.VM, img *Image, plan *warmPlan) operation.Way {
	var proc Process
	var spec LaunchSpec
	return operation.Way{Name: "boot", Steps: []operation.Step{
		s.overlayStep(vm, img),
		s.launchStep(vm.Name, img, &proc, &spec, nil),
		s.waitAgentStep(vm.Name, &proc),
		s.saveStep(plan, &proc, func() string { return spec.Disk }),
	}}
}

// overlayStep makes a new VM's disk: copy-on-write over its image.
func (s *Service) overlayStep(vm state.VM, img *Image) operation.Step {
	return operation.Step{Name: "make disk", Do: func(ctx context.Context) error {
		if err := os.MkdirAll(vm.InstanceDir, 0o700); err != nil {
			return err
		}
		return s.images.Overlay(ctx, *img, filepath.Join(vm.InstanceDir, layout.Disk), vm.DiskMiB)
	}, Undo: func(ctx context.Context) error {
		return os.RemoveAll(vm.InstanceDir)
	}}
}

// bootSteps boot a VM that has its disk already (vm start, restart).
func (s *Service) bootSteps(name, network string) []operation.Step {
	var proc Process
	var spec LaunchSpec
	var img Image
	var steps []operation.Step
	if network == api.NetworkBridge {
		steps = s.bridgeSteps(name)
	}
	return append(steps, s.launchStep(name, &img, &proc, &spec, nil), s.waitAgentStep(name, &proc))
}

// launchStep starts the VM's engine process on its instance directory;
// adjust (may be nil) changes the launch (a restore's saved state). The
// pid is recorded as soon as the process exists (the engine's pidfile
// already holds it, for a daemon that dies in between).
func (s *Service) launchStep(name string, img *Image, proc *Process, spec *LaunchSpec, adjust func(*LaunchSpec)) operation.Step {
	return operation.Step{Name: "launch", Do: func(ctx context.Context) error {
		vm, err := s.db.UpdateVM(ctx, name, func(v *state.VM) error {
			v.State, v.LastError = state.VMStarting, ""
			return nil
		})
		if err != nil {
			return err
		}
		if img.Name == "" {
			if *img, err = s.images.Resolve(ctx, vm.Image); err != nil {
				return err
			}
		}
		*spec = LaunchSpec{
			InstanceDir: vm.InstanceDir, Kernel: img.Kernel, Initrd: img.Initrd, KernelArgs: img.KernelArgs,
			Disk: filepath.Join(vm.InstanceDir, layout.Disk), Hostname: vm.Name, CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB,
		}
		if vm.Network != api.NetworkBridge {
			spec.User = &UserNet{Ports: vm.Ports, AllowHost: vm.AllowHost}
		}
		if adjust != nil {
			adjust(spec)
		}
		if vm.Network == api.NetworkBridge {
			if spec.Tap, err = s.LaunchTap(vm); err != nil {
				return err
			}
		}
		*proc, err = s.engine.Launch(ctx, *spec)
		if err != nil {
			return err
		}
		_, err = s.db.UpdateVM(ctx, name, func(v *state.VM) error { v.PID = (*proc).PID(); return nil })
		return err
	}, Undo: func(ctx context.Context) error {
		return s.endLaunch(ctx, name, *proc)
	}}
}

// endLaunch undoes a launch: the process ends, and the VM is stopped.
func (s *Service) endLaunch(ctx context.Context, name string, proc Process) error {
	if proc == nil {
		return nil
	}
	err := proc.Kill(ctx)
	s.forgetProc(name, proc)
	proc.Close()
	s.db.UpdateVM(ctx, name, func(v *state.VM) error {
		v.State, v.PID, v.BootID = state.VMStopped, 0, ""
		return nil
	})
	return err
}

// waitAgentStep waits for a booting guest's agent to say it is ready.
func (s *Service) waitAgentStep(name string, proc *Process) operation.Step {
	return operation.Step{Name: "wait for agent", Do: func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, bootTimeout)
		defer cancel()
		bootID, err := (*proc).WaitAgent(ctx)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return rpc.Errorf(rpc.CodeTimeout, "the guest agent did not report ready within %s; see `banger vm logs %s`", bootTimeout, name)
			}
			return err
		}
		return s.markRunning(ctx, name, *proc, bootID)
	}}
}

// resumeGuest gives a restored guest its own identity (tap: a bridged
// VM's network) and records it running.
func (s *Service) resumeGuest(ctx context.Context, name string, proc Process, tap *LaunchTap) error {
	ctx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	id, err := newIdentity(name, tap)
	if err != nil {
		return err
	}
	bootID, err := proc.Resume(ctx, id)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return rpc.Errorf(rpc.CodeTimeout, "the restored guest's agent did not answer within %s; see `banger vm logs %s`", bootTimeout, name)
		}
		return err
	}
	return s.markRunning(ctx, name, proc, bootID)
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

// StartBegin boots a stopped VM as an operation.
func (s *Service) StartBegin(ctx context.Context, p api.VMRef) (api.Operation, error) {
	return s.bootBegin(ctx, p.Name, api.KindVMStart, false)
}

// RestartBegin stops a running VM (cleanly) and boots it again.
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
