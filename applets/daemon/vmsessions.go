package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"path"
	"time"

	"banger/applets/agentlink"
	"banger/applets/api"
	"banger/applets/daemon/state"
	"banger/applets/session"
	"banger/logging"
	"banger/rpc"
)

// Sessions with a running VM's agent: exec (vm.exec), the workspace copy
// (vm.copy) and the guest's listening ports (vm.ports). The daemon checks
// the VM and opens the agent's stream; the session's frames then pass
// through it untouched, both legs speaking package session's format.

// sessionOpenTimeout bounds opening a session on the agent: a live agent
// answers in milliseconds, even under TCG.
const sessionOpenTimeout = 30 * time.Second

// running returns the engine process of a VM that must be running.
func (s *vmService) running(ctx context.Context, name string) (vmProcess, error) {
	vm, err := s.db.GetVM(ctx, name)
	if err != nil {
		return nil, err
	}
	p := s.proc(name)
	if vm.State != state.VMRunning || p == nil {
		return nil, rpc.Errorf(rpc.CodeNotRunning, "vm %q is %s; start it with `banger vm start %s`", name, vm.State, name)
	}
	return p, nil
}

// exec starts a command in the VM.
func (s *vmService) exec(ctx context.Context, p api.VMExec) (struct{}, rpc.StreamFunc, error) {
	if len(p.Argv) == 0 && !p.Shell {
		return struct{}{}, nil, rpc.Errorf(rpc.CodeInvalidParams, "no command to run")
	}
	serve, err := s.openSession(ctx, p.Name, agentlink.MethodExec, p.Exec)
	return struct{}{}, serve, err
}

// copyIn unpacks the session's tar stream into a directory of the VM.
func (s *vmService) copyIn(ctx context.Context, p api.VMCopy) (struct{}, rpc.StreamFunc, error) {
	if !path.IsAbs(p.Dir) {
		return struct{}{}, nil, rpc.Errorf(rpc.CodeInvalidParams, "the directory to copy into must be absolute, not %q", p.Dir)
	}
	serve, err := s.openSession(ctx, p.Name, agentlink.MethodUntar, session.Untar{Dir: p.Dir})
	return struct{}{}, serve, err
}

// openSession opens method on the VM's agent and returns the session
// that splices the caller's connection to it.
func (s *vmService) openSession(ctx context.Context, name, method string, params any) (rpc.StreamFunc, error) {
	proc, err := s.running(ctx, name)
	if err != nil {
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, sessionOpenTimeout)
	defer cancel()
	guest, err := proc.OpenSession(octx, method, params)
	if err != nil {
		var re *rpc.ErrorResponse
		if errors.As(err, &re) {
			return nil, rpc.Errorf(re.Code, "the agent refused: %s", re.Message)
		}
		return nil, rpc.Errorf(rpc.CodeUnavailable, "cannot reach the VM's agent: %v", err)
	}
	return func(ctx context.Context, client net.Conn) error {
		return splice(ctx, client, guest)
	}, nil
}

// splice copies frames both ways until the guest ends the session (after
// its Exit frame). A client that leaves ends the guest's side, which
// kills the command; a guest that does not close within a grace period
// after that is abandoned.
func splice(ctx context.Context, client, guest net.Conn) error {
	defer guest.Close()
	go func() {
		io.Copy(guest, client)
		guest.SetDeadline(time.Now().Add(10 * time.Second))
		guest.Close()
	}()
	n, err := io.Copy(client, guest)
	logging.From(ctx).Debug().Int64("bytes_out", n).Msg("session ended")
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// ports lists the guest's listening sockets and the VM's published ports.
func (s *vmService) ports(ctx context.Context, p api.VMRef) (api.VMPorts, error) {
	proc, err := s.running(ctx, p.Name)
	if err != nil {
		return api.VMPorts{}, err
	}
	vm, err := s.show(ctx, p)
	if err != nil {
		return api.VMPorts{}, err
	}
	listening, err := proc.GuestPorts(ctx)
	if err != nil {
		return api.VMPorts{}, err
	}
	res := api.VMPorts{Listening: listening, Published: vm.Ports}
	if res.Listening == nil {
		res.Listening = []api.GuestPort{}
	}
	if res.Published == nil {
		res.Published = []api.PortForward{}
	}
	return res, nil
}
