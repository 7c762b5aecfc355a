package vm

import (
	"context"
	"fmt"
	"time"

	"banger/applets/daemon/state"
	"banger/internal/api"
	"banger/logging"
	"banger/rpc"
)

// Stop answers vm.stop: the guest asked to power off, killed when it
// does not within the timeout.
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

// Kill answers vm.kill: the VM's process ended at once.
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
