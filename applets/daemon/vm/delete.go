package vm

import (
	"context"
	"fmt"
	"os"

	"banger/applets/daemon/state"
	"banger/internal/api"
	"banger/logging"
	"banger/rpc"
)

// Delete answers vm.delete: the VM's process (killed if it runs), its
// tap, its files and its row go.
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

// Prune answers vm.prune: every VM that is not running is deleted.
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
