package vm

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/oklog/ulid/v2"

	"banger/applets/daemon/operation"
	"banger/applets/daemon/state"
	"banger/internal/api"
	"banger/rpc"
)

// CreateBegin validates the request, then runs the create as an
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
	vm := s.newRow(p, network, ports, allowHost)
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

// newRow is the row of a VM being created.
func (s *Service) newRow(p api.VMCreate, network string, ports []state.PortForward, allowHost []int) state.VM {
	id := "vm-" + ulid.Make().String()
	return state.VM{ID: id, Name: p.Name, Image: p.Image, CPUs: p.CPUs, MemoryMiB: p.MemoryMiB, DiskMiB: p.DiskMiB,
		State: state.VMCreating, Network: network, InstanceDir: filepath.Join(s.root, id), Ports: ports,
		AllowHost: allowHost}
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
