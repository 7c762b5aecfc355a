package vm

import (
	"context"
	"slices"

	"banger/applets/daemon/state"
	"banger/applets/daemon/usernet"
	"banger/internal/api"
	"banger/rpc"
)

// Published ports: a host port on loopback forwarded to a guest port by
// the VM's user-mode network. They are part of the VM's configuration
// (state.VM.Ports), given to every launch, and changed on a running VM
// through its network. The three types that carry one (api, state,
// usernet) have the same fields, so they convert into each other.

// checkPublish validates forwards and checks that their host ports are
// free now, so a taken one fails the call, not the boot.
func checkPublish(fs []api.PortForward) ([]state.PortForward, error) {
	out := make([]state.PortForward, 0, len(fs))
	seen := map[int]bool{}
	for _, f := range fs {
		f = withPortDefaults(f)
		if f.Proto != "tcp" {
			return nil, rpc.Errorf(rpc.CodeInvalidParams, "publish %d:%d/%s: only tcp ports are published", f.HostPort, f.GuestPort, f.Proto)
		}
		if err := usernet.Forward(f).Validate(); err != nil {
			return nil, err
		}
		if seen[f.HostPort] {
			return nil, rpc.Errorf(rpc.CodeInvalidParams, "host port %d is published twice", f.HostPort)
		}
		seen[f.HostPort] = true
		if err := usernet.CheckHostPortFree(f.HostAddr, f.HostPort); err != nil {
			return nil, err
		}
		out = append(out, state.PortForward(f))
	}
	return out, nil
}

// checkAllowHost validates the host loopback ports a VM may reach, in
// order, once each.
func checkAllowHost(ports []int) ([]int, error) {
	var out []int
	for _, p := range ports {
		if p < 1 || p > 65535 {
			return nil, rpc.Errorf(rpc.CodeInvalidParams, "allow-host port %d: want 1 to 65535", p)
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out, nil
}

func withPortDefaults(f api.PortForward) api.PortForward {
	if f.Proto == "" {
		f.Proto = "tcp"
	}
	if f.HostAddr == "" {
		f.HostAddr = "127.0.0.1"
	}
	return f
}

func portsToAPI(ps []state.PortForward) []api.PortForward {
	var out []api.PortForward
	for _, p := range ps {
		out = append(out, api.PortForward(p))
	}
	return out
}

// PortAdd publishes a port, at once when the VM runs.
func (s *Service) PortAdd(ctx context.Context, p api.VMPort) (api.VM, error) {
	release, err := s.claim(p.Name, "changing its ports")
	if err != nil {
		return api.VM{}, err
	}
	defer release()
	add, err := checkPublish([]api.PortForward{p.PortForward})
	if err != nil {
		return api.VM{}, err
	}
	vm, err := s.db.UpdateVM(ctx, p.Name, func(v *state.VM) error {
		if v.Network == api.NetworkBridge {
			return rpc.Errorf(rpc.CodeInvalidParams, "vm %q is bridged: it is reached at its own address (%s), not through published ports", p.Name, v.Address)
		}
		for _, f := range v.Ports {
			if f.HostPort == add[0].HostPort {
				return rpc.Errorf(rpc.CodeConflict, "vm %q already publishes host port %d (to guest port %d)", p.Name, f.HostPort, f.GuestPort)
			}
		}
		v.Ports = append(v.Ports, add[0])
		return nil
	})
	if err != nil {
		return api.VM{}, err
	}
	if proc := s.proc(p.Name); proc != nil && vm.State == state.VMRunning {
		if err := proc.AddForward(ctx, add[0]); err != nil {
			s.db.UpdateVM(context.WithoutCancel(ctx), p.Name, func(v *state.VM) error {
				v.Ports = removePort(v.Ports, add[0].HostPort)
				return nil
			})
			return api.VM{}, err
		}
	}
	return toAPI(vm), nil
}

// PortRemove stops publishing a host port.
func (s *Service) PortRemove(ctx context.Context, p api.VMPort) (api.VM, error) {
	release, err := s.claim(p.Name, "changing its ports")
	if err != nil {
		return api.VM{}, err
	}
	defer release()
	var gone state.PortForward
	vm, err := s.db.UpdateVM(ctx, p.Name, func(v *state.VM) error {
		for _, f := range v.Ports {
			if f.HostPort == p.HostPort {
				gone = f
			}
		}
		if gone.HostPort == 0 || p.GuestPort != 0 && gone.GuestPort != p.GuestPort {
			return rpc.Errorf(rpc.CodeNotFound, "vm %q does not publish host port %d to guest port %d; see `banger vm ports %s`", p.Name, p.HostPort, p.GuestPort, p.Name)
		}
		v.Ports = removePort(v.Ports, p.HostPort)
		return nil
	})
	if err != nil {
		return api.VM{}, err
	}
	if proc := s.proc(p.Name); proc != nil && vm.State == state.VMRunning {
		if err := proc.RemoveForward(ctx, gone); err != nil {
			// The VM still forwards it: so must its record say.
			s.db.UpdateVM(context.WithoutCancel(ctx), p.Name, func(v *state.VM) error {
				v.Ports = append(v.Ports, gone)
				return nil
			})
			return api.VM{}, err
		}
	}
	return toAPI(vm), nil
}

func removePort(ps []state.PortForward, hostPort int) []state.PortForward {
	var out []state.PortForward
	for _, p := range ps {
		if p.HostPort != hostPort {
			out = append(out, p)
		}
	}
	return out
}
