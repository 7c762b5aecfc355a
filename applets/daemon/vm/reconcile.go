package vm

import (
	"context"
	"os"
	"sync"

	"banger/applets/daemon/state"
	"banger/internal/api"
	"banger/logging"
	"banger/rpc"
)

// reconcile runs at daemon start: VMs recorded as running are re-attached
// when their engine process is alive and ours, and marked stopped (their
// runtime leftovers and tap removed) when not; VMs a dead daemon was
// creating are removed with their files and tap, as the create's undo
// would have (interrupted names the VMs whose create operation was
// running); a tap still recorded for a VM that does not run is removed.
// Its helper calls share one op id, logged with the records. Only a VM
// that runs on is attached in full (its agent link, its network): the
// rest are ended, and a paused one (an adopted standby) never answers.
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
// long each. A VM to be ended is only found (AttachPaused).
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
			var proc Process
			var err error
			if interrupted[vm.Name] || vm.State != state.VMRunning {
				// It is to be ended, not used: no need to wait for its
				// agent (a paused one, an adopted standby, never answers)
				// or to make its network again.
				proc, err = s.engine.AttachPaused(ctx, vm.InstanceDir)
			} else {
				var user *UserNet
				if vm.Network != api.NetworkBridge {
					user = &UserNet{Ports: vm.Ports, AllowHost: vm.AllowHost}
				}
				proc, err = s.engine.Attach(ctx, vm.InstanceDir, vm.Name, user)
			}
			mu.Lock()
			out[vm.Name] = attachResult{proc, err}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}
