package vm

import (
	"cmp"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"banger/applets/daemon/state"
	"banger/internal/agentlink"
	"banger/internal/api"
	"banger/internal/session"
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

// running returns a VM that must be running and its engine process.
func (s *Service) running(ctx context.Context, name string) (state.VM, Process, error) {
	vm, err := s.db.GetVM(ctx, name)
	if err != nil {
		return vm, nil, err
	}
	p := s.proc(name)
	if vm.State != state.VMRunning || p == nil {
		return vm, nil, rpc.Errorf(rpc.CodeNotRunning, "vm %q is %s; start it with `banger vm start %s`", name, vm.State, name)
	}
	return vm, p, nil
}

// Exec starts a command in the VM. The agent knows the session by this
// call's op id (it adopts the op id the daemon forwards), which the
// result gives the client for vm.exec.signal.
func (s *Service) Exec(ctx context.Context, p api.VMExec) (api.VMExecResult, rpc.StreamFunc, error) {
	res := api.VMExecResult{OpID: rpc.OpIDFrom(ctx)}
	if len(p.Argv) == 0 && !p.Shell {
		return res, nil, rpc.Errorf(rpc.CodeInvalidParams, "no command to run")
	}
	vm, proc, err := s.running(ctx, p.Name)
	if err != nil {
		return res, nil, err
	}
	serve, err := s.openSession(ctx, proc, agentlink.MethodExec, s.withImageDefaults(ctx, vm.Image, p.Exec, p.ImageCommand))
	return res, serve, err
}

// withImageDefaults puts what the VM's image says its commands run with
// (an OCI image's Env, WorkingDir and User) under what the caller gave:
// the caller's Env entries come after, so they win, and a Dir or User
// given is kept. With imageCommand and no Argv, the image's Entrypoint
// and Cmd are the command (the shell when it has neither). An image that
// cannot be read costs its defaults, not the command.
func (s *Service) withImageDefaults(ctx context.Context, image string, e session.Exec, imageCommand bool) session.Exec {
	d, err := s.images.ExecDefaults(ctx, image)
	if err != nil {
		logging.From(ctx).Warn().Err(err).Str("image", image).Msg("the image's exec defaults cannot be read; the command runs without them")
		d = api.OCIImage{}
	}
	e.Env = append(slices.Clip(d.Env), e.Env...)
	e.Dir = cmp.Or(e.Dir, d.WorkingDir)
	e.User = cmp.Or(e.User, d.User)
	if argv := append(slices.Clip(d.Entrypoint), d.Cmd...); imageCommand && len(e.Argv) == 0 && len(argv) > 0 {
		e.Argv, e.Shell = argv, false
	}
	e.Dir = rootHome(e.Dir, e.User)
	return e
}

// rootHome resolves a directory in the home ("~/PATH") of root, /root,
// here: an agent of an older banger takes only absolute paths, and root
// is who runs nearly every command. Another user's home is the guest's
// to say (its /etc/passwd): the agent resolves it.
func rootHome(dir, user string) string {
	if user != "" && user != "root" && user != "0" {
		return dir
	}
	if dir == "~" {
		return "/root"
	}
	if rest, ok := strings.CutPrefix(dir, "~/"); ok {
		return path.Join("/root", rest)
	}
	return dir
}

// ExecSignal signals the command of a running exec session.
func (s *Service) ExecSignal(ctx context.Context, p api.VMExecSignal) (struct{}, error) {
	_, proc, err := s.running(ctx, p.Name)
	if err != nil {
		return struct{}{}, err
	}
	return struct{}{}, proc.SignalSession(ctx, p.OpID, p.Signal)
}

// CopyIn unpacks the session's tar stream into a directory of the VM,
// for the user the copy names, else the one its image runs commands as.
func (s *Service) CopyIn(ctx context.Context, p api.VMCopy) (struct{}, rpc.StreamFunc, error) {
	if !path.IsAbs(p.Dir) && p.Dir != "~" && !strings.HasPrefix(p.Dir, "~/") {
		return struct{}{}, nil, rpc.Errorf(rpc.CodeInvalidParams, "the directory to copy into must be absolute or in the home (~/PATH), not %q", p.Dir)
	}
	vm, proc, err := s.running(ctx, p.Name)
	if err != nil {
		return struct{}{}, nil, err
	}
	e := s.withImageDefaults(ctx, vm.Image, session.Exec{Dir: p.Dir, User: p.User}, false)
	serve, err := s.openSession(ctx, proc, agentlink.MethodUntar, session.Untar{Dir: e.Dir, User: e.User, Top: p.Top})
	return struct{}{}, serve, err
}

// CopyOut streams a tar of a path in the VM (agent.tar): what the guest
// writes goes to the caller as it comes, for the caller to unpack with
// the rules for what a guest sends.
func (s *Service) CopyOut(ctx context.Context, p api.VMCopyOut) (struct{}, rpc.StreamFunc, error) {
	if !path.IsAbs(p.Path) && p.Path != "~" && !strings.HasPrefix(p.Path, "~/") {
		return struct{}{}, nil, rpc.Errorf(rpc.CodeInvalidParams, "the path to copy out must be absolute or in the home (~/PATH), not %q", p.Path)
	}
	vm, proc, err := s.running(ctx, p.Name)
	if err != nil {
		return struct{}{}, nil, err
	}
	e := s.withImageDefaults(ctx, vm.Image, session.Exec{Dir: p.Path, User: p.User}, false)
	serve, err := s.openSession(ctx, proc, agentlink.MethodTar, session.Tar{Path: e.Dir, User: e.User})
	return struct{}{}, serve, err
}

// openSession opens method on the running VM's agent and returns the
// session that splices the caller's connection to it.
func (s *Service) openSession(ctx context.Context, proc Process, method string, params any) (rpc.StreamFunc, error) {
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
	opID := rpc.OpIDFrom(ctx)
	return func(ctx context.Context, client net.Conn) error {
		// A client gone for good: the command is killed through a call of
		// its own, which no input queued on the session can hold up.
		kill := func() {
			kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if method == agentlink.MethodExec {
				proc.SignalSession(kctx, opID, int(syscall.SIGKILL))
			}
		}
		return splice(ctx, client, guest, kill)
	}, nil
}

// splice copies frames both ways until the guest ends the session (after
// its Exit frame). A client that leaves ends the guest's side, which
// kills the command, also when the guest is not reading (a command that
// ignores its input: then the copy toward it blocks and would never see
// the client go), so the client's hang-up is watched for apart. A guest
// that does not close within a grace period after that is abandoned.
// A client that leaves once the guest has sent its Exit frame (as every
// client does as soon as it reads it) leaves a guest that is closing on
// its own: nothing is killed, and the guest gets the same grace period.
func splice(ctx context.Context, client, guest net.Conn, kill func()) error {
	defer guest.Close()
	guestDone := make(chan struct{})
	toClient := session.NewExitWatch(client)
	var once sync.Once
	leave := func() {
		once.Do(func() {
			select {
			case <-guestDone: // the session ended first: nothing to kill
				return
			case <-toClient.Exited():
				guest.SetDeadline(time.Now().Add(sessionCloseGrace))
				return
			default:
			}
			go kill()
			guest.SetDeadline(time.Now().Add(sessionCloseGrace))
			guest.Close()
		})
	}
	go func() {
		io.Copy(guest, client)
		leave()
	}()
	stopWatch := watchHangup(client, leave)
	defer stopWatch()
	n, err := io.Copy(toClient, guest)
	close(guestDone)
	logging.From(ctx).Debug().Int64("bytes_out", n).Msg("session ended")
	if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return err
}

// sessionCloseGrace is how long a guest may take to close a session
// after its client left.
const sessionCloseGrace = 10 * time.Second

// hangupPoll is how often a session's client is checked for a hang-up
// that its reader may not see.
const hangupPoll = time.Second

// watchHangup calls gone once conn's peer has hung up, looking without
// reading (the session's reader owns the bytes). It returns the function
// that stops the watch.
func watchHangup(conn net.Conn, gone func()) (stop func()) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return func() {}
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(hangupPoll)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			hup := false
			raw.Control(func(fd uintptr) {
				p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
				if n, err := unix.Poll(p, 0); err == nil && n > 0 {
					hup = p[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
				}
			})
			if hup {
				gone()
				return
			}
		}
	}()
	return func() { close(done) }
}

// Ports lists the guest's listening sockets and the VM's published ports.
func (s *Service) Ports(ctx context.Context, p api.VMRef) (api.VMPorts, error) {
	vm, proc, err := s.running(ctx, p.Name)
	if err != nil {
		return api.VMPorts{}, err
	}
	listening, err := proc.GuestPorts(ctx)
	if err != nil {
		return api.VMPorts{}, err
	}
	res := api.VMPorts{Listening: listening, Published: portsToAPI(vm.Ports)}
	if res.Listening == nil {
		res.Listening = []api.GuestPort{}
	}
	if res.Published == nil {
		res.Published = []api.PortForward{}
	}
	return res, nil
}
