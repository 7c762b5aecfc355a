// Package qemu is the VM service's engine on QEMU (vm.Engine, as Lima's
// driver/qemu is its driver's): the engine package's QEMU processes, each
// with its user network (usernet) and its agent link (agentlink), in the
// two roles vm.Process asks for.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"banger/applets/agent/boot"
	"banger/applets/daemon/engine"
	"banger/applets/daemon/state"
	"banger/applets/daemon/usernet"
	"banger/applets/daemon/vm"
	"banger/applets/daemon/warm"
	"banger/internal/agentlink"
	"banger/internal/api"
	"banger/internal/layout"
	"banger/logging"
	"banger/rpc"
)

// Engine is the vm.Engine of QEMU's microvm.
type Engine struct {
	q     *engine.QEMU
	accel engine.Accel
	// guestLog writes the records the guests' agents send (nil: they
	// are not read).
	guestLog *zerolog.Logger
}

func (e *Engine) Launch(ctx context.Context, spec vm.LaunchSpec) (vm.Process, error) {
	args := append(strings.Fields(spec.KernelArgs), boot.ParamHostname+"="+spec.Hostname)
	es := engine.Spec{
		Dir: spec.InstanceDir, Name: spec.Hostname, Kernel: spec.Kernel, Initrd: spec.Initrd,
		Disk: spec.Disk, CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB, KernelArgs: args, Accel: e.accel,
		Incoming: spec.Incoming, AwaitState: spec.AwaitState,
	}
	var un *usernet.Network
	if t := spec.Tap; t != nil {
		es.Tap = &engine.TapNet{Name: t.Name, MAC: t.MAC, Guest: boot.Network{Address: t.Address, Gateway: t.Gateway, DNS: t.DNS, Search: t.Search}}
	} else {
		// Made first: a published port that is taken fails the launch
		// before QEMU starts.
		user := spec.User
		if user == nil {
			user = &vm.UserNet{}
		}
		var err error
		if un, err = newUserNet(ctx, *user, true); err != nil {
			return nil, err
		}
		es.Net = &engine.UserNet{}
	}
	inst, err := e.q.Launch(ctx, es)
	if err != nil {
		if un != nil {
			un.Close()
		}
		if errors.Is(err, engine.ErrExitedAtStart) {
			err = fmt.Errorf("%w: %w", vm.ErrExitedAtStart, err)
		}
		return nil, err
	}
	p := e.newProcess(inst, spec.Hostname)
	// A guest that loads a saved state has the queued records of the
	// guest the state was saved from: its own come from its resume on.
	p.restored = spec.Incoming != "" || spec.AwaitState
	if un != nil {
		if err := p.connectNet(ctx, un); err != nil {
			inst.Kill(context.WithoutCancel(ctx))
			return nil, err
		}
	}
	return p, nil
}

// newUserNet makes a user-mode VM's network and publishes its ports.
// When strict, a port that cannot be published fails it; otherwise (a
// VM found running by a restarted daemon, whose port something else took
// meanwhile) the port is skipped, with a warning.
func newUserNet(ctx context.Context, user vm.UserNet, strict bool) (*usernet.Network, error) {
	log := logging.From(ctx)
	un, err := usernet.New(usernet.Config{AllowHost: user.AllowHost, Log: *log})
	if err != nil {
		return nil, err
	}
	for _, f := range user.Ports {
		if err := un.Expose(usernet.Forward(f)); err != nil {
			if strict {
				un.Close()
				return nil, err
			}
			log.Warn().Err(err).Int("host_port", f.HostPort).Msg("a published port of a running VM is not published again")
		}
	}
	return un, nil
}

// connectNet connects un to the VM's network card; un ends when QEMU
// does.
func (p *process) connectNet(ctx context.Context, un *usernet.Network) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", p.inst.NetSocket())
	if err != nil {
		un.Close()
		return fmt.Errorf("connect the user network: %w", err)
	}
	if err := un.Attach(conn); err != nil {
		un.Close()
		return err
	}
	p.mu.Lock()
	p.net = un
	p.mu.Unlock()
	go func() {
		<-p.inst.Done()
		un.Close()
	}()
	return nil
}

func (e *Engine) Attach(ctx context.Context, dir, name string, user *vm.UserNet) (vm.Process, error) {
	inst, err := engine.Attach(ctx, dir)
	if err != nil {
		return nil, err
	}
	p := e.newProcess(inst, name)
	if user != nil {
		un, err := newUserNet(ctx, *user, false)
		if err != nil {
			return nil, err
		}
		if err := p.connectNet(ctx, un); err != nil {
			logging.From(ctx).Warn().Err(err).Str("dir", dir).Msg("a running VM's network is not connected again")
		}
	}
	// A re-attached VM gets its agent link back (the agent answers a new
	// host with a new Hello), so shutdown stays clean.
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if link, err := agentlink.Wait(lctx, inst.AgentSocket()); err == nil {
		p.setLink(link)
	}
	return p, nil
}

func (e *Engine) AttachPaused(ctx context.Context, dir string) (vm.Process, error) {
	inst, err := engine.Attach(ctx, dir)
	if err != nil {
		return nil, err
	}
	return e.newProcess(inst, ""), nil
}

func (e *Engine) Leftovers(dir string) error { return engine.CleanRuntime(dir) }

// Identity is QEMU's binary, the accelerator setting and the user
// network's card: a state saved under TCG does not load under KVM, nor
// one saved with QEMU's own user network (slirp) into a stream netdev.
func (e *Engine) Identity() (string, error) {
	bin, err := e.q.Path()
	if err != nil {
		return "", err
	}
	id, err := warm.FileID(bin)
	return id + " accel=" + string(e.accel) + " usernet=stream", err
}

// process is one running QEMU and, once ready, its agent link.
type process struct {
	inst     *engine.Instance
	guestLog *zerolog.Logger

	mu   sync.Mutex // guards name, restored, copying, link, net and early
	name string     // the VM's, which its agent's records are tagged with
	// restored is a guest loaded from a saved state that has not been
	// resumed yet.
	restored bool
	link     *agentlink.Link
	// copying is the link whose records are being copied.
	copying *agentlink.Link
	// net is a user-mode VM's network, nil for a bridged VM.
	net *usernet.Network
	// early is the handshake LoadState began, for Resume to finish.
	early agentWait
}

func (e *Engine) newProcess(inst *engine.Instance, name string) *process {
	return &process{inst: inst, guestLog: e.guestLog, name: name}
}

// setLink keeps the agent's link, and copies its records.
func (p *process) setLink(link *agentlink.Link) {
	p.mu.Lock()
	p.link = link
	p.mu.Unlock()
	p.copyRecords()
}

// copyRecords copies the records the agent sends on its link into the
// guest log until the link ends; a restored guest's, once resumed.
func (p *process) copyRecords() {
	p.mu.Lock()
	defer p.mu.Unlock()
	link := p.link
	if p.guestLog == nil || link == nil || p.restored || p.copying == link {
		return
	}
	p.copying = link
	go func() {
		err := link.CopyRecords(context.Background(), func(r agentlink.GuestRecord) {
			r.Log(p.guestLog, p.vmName())
		})
		p.mu.Lock()
		if p.copying == link {
			p.copying = nil
		}
		p.mu.Unlock()
		p.guestLog.Debug().Str("vm", p.vmName()).Err(err).Msg("the agent's records end")
	}()
}

func (p *process) vmName() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.name
}

func (p *process) PID() int { return p.inst.PID }

func (p *process) Exited() <-chan struct{} { return p.inst.Done() }

func (p *process) CheckStandby(ctx context.Context) error {
	if !p.inst.Running() {
		return errors.New("its QEMU has exited")
	}
	p.mu.Lock()
	link := p.link
	p.mu.Unlock()
	if link == nil {
		return errors.New("it has no agent link")
	}
	select {
	case <-link.Done():
		return errors.New("its agent link has closed")
	default:
	}
	st, err := p.inst.Status(ctx)
	if err != nil {
		return fmt.Errorf("its QEMU does not answer: %w", err)
	}
	if st.Status != "paused" {
		return fmt.Errorf("its guest is %s, not paused", st.Status)
	}
	return nil
}

func (p *process) WaitAgent(ctx context.Context) (string, error) {
	return p.finishAgentWait(ctx, p.startAgentWait(ctx))
}

// agentWait is a connection to the agent on its way: its link, or why
// there is none.
type agentWait chan agentWaitResult

type agentWaitResult struct {
	link *agentlink.Link
	err  error
}

// startAgentWait connects to the agent's socket and does the handshake
// in the background, within ctx.
func (p *process) startAgentWait(ctx context.Context) agentWait {
	ch := make(agentWait, 1)
	go func() {
		l, err := agentlink.Wait(ctx, p.inst.AgentSocket())
		ch <- agentWaitResult{l, err}
	}()
	return ch
}

// finishAgentWait waits for the handshake startAgentWait began, and keeps
// the link.
func (p *process) finishAgentWait(ctx context.Context, ch agentWait) (string, error) {
	select {
	case r := <-ch:
		if r.err != nil {
			// The channel closes as QEMU exits: when it did, that is the
			// news, not the closed channel.
			select {
			case <-p.inst.Done():
				return "", p.exitedDuringBoot()
			case <-time.After(time.Second):
			}
			return "", r.err
		}
		p.setLink(r.link)
		return r.link.Hello().BootID, nil
	case <-p.inst.Done():
		// QEMU exited before its agent spoke: say so, rather than wait out
		// the boot timeout.
		return "", p.exitedDuringBoot()
	case <-ctx.Done():
		return "", fmt.Errorf("wait for the agent: %w", ctx.Err())
	}
}

// exitedDuringBoot says that QEMU exited before the agent was ready, with
// the end of the console and of QEMU's own log in the message: a failed
// create's undo removes the instance directory, and the files with it.
func (p *process) exitedDuringBoot() error {
	return rpc.Errorf(rpc.CodeOperationFailed, "the VM's engine exited during boot; its console ended with: %s; qemu said: %s",
		vm.LastLines(p.inst.ConsoleLog(), 6), vm.LastLines(filepath.Join(p.inst.Dir, layout.EngineLog), 3))
}

func (p *process) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	link := p.link
	p.mu.Unlock()
	if link != nil {
		if err := link.PowerOff(ctx); err == nil {
			if err := p.inst.Wait(ctx); err == nil {
				return engine.CleanRuntime(p.inst.Dir)
			}
		}
	}
	// No agent, or it did not end the VM: the power button, then quit.
	grace := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		grace = time.Until(dl)
	}
	return p.inst.Stop(ctx, grace)
}

func (p *process) Kill(ctx context.Context) error {
	err := p.inst.Kill(ctx)
	if errors.Is(err, engine.ErrNotRunning) {
		return nil
	}
	return err
}

// agent is the VM's agent link, once the guest has been ready.
func (p *process) agent() (*agentlink.Link, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.link == nil {
		return nil, rpc.Errorf(rpc.CodeUnavailable, "the VM's agent is not connected (restart the VM)")
	}
	return p.link, nil
}

func (p *process) OpenSession(ctx context.Context, method string, params any) (net.Conn, error) {
	link, err := p.agent()
	if err != nil {
		return nil, err
	}
	return link.OpenSession(ctx, method, params)
}

func (p *process) AddForward(ctx context.Context, f state.PortForward) error {
	un, err := p.network()
	if err != nil {
		return err
	}
	return un.Expose(usernet.Forward(f))
}

func (p *process) RemoveForward(ctx context.Context, f state.PortForward) error {
	un, err := p.network()
	if err != nil {
		return err
	}
	return un.Unexpose(usernet.Forward(f))
}

func (p *process) AllowHost(ports []int) error {
	un, err := p.network()
	if err != nil {
		return err
	}
	return un.AllowHost(ports)
}

// network is the VM's user-mode network.
func (p *process) network() (*usernet.Network, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.net == nil {
		return nil, rpc.Errorf(rpc.CodeInvalidParams, "the VM has no user-mode network")
	}
	return p.net, nil
}

func (p *process) SignalSession(ctx context.Context, opID string, sig int) error {
	link, err := p.agent()
	if err != nil {
		return err
	}
	return link.Signal(ctx, opID, sig)
}

func (p *process) GuestPorts(ctx context.Context) ([]api.GuestPort, error) {
	link, err := p.agent()
	if err != nil {
		return nil, err
	}
	return link.Ports(ctx)
}

func (p *process) Moved(dir string) { p.inst.Moved(dir) }

func (p *process) SaveState(ctx context.Context, path string) error {
	return p.inst.SaveState(ctx, path)
}

func (p *process) Continue(ctx context.Context) error { return p.inst.Continue(ctx) }

func (p *process) Pause(ctx context.Context) error { return p.inst.Pause(ctx) }

// linked says whether the agent link is up: a standby's is, from the
// hello it said before it was taken.
func (p *process) linked() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.link != nil
}

func (p *process) LoadState(ctx context.Context, run bool) error {
	if run && !p.linked() {
		// Connect to the agent while the state loads: the reset frame
		// waits in the channel, and the guest reads it as soon as it runs
		// again.
		p.mu.Lock()
		p.early = p.startAgentWait(ctx)
		p.mu.Unlock()
	}
	return p.inst.LoadState(ctx, run)
}

func (p *process) StartLoad(ctx context.Context, path string) error {
	return p.inst.StartLoad(ctx, path)
}

func (p *process) Resume(ctx context.Context, id vm.GuestIdentity) (string, error) {
	// Sub-stages, so a trace shows which half a slow resume spent its
	// time in.
	if !p.linked() { // a standby said hello before it was taken
		err := logging.Stage(ctx, "agent hello", func(ctx context.Context) error {
			p.mu.Lock()
			early := p.early
			p.early = nil
			p.mu.Unlock()
			if early == nil {
				early = p.startAgentWait(ctx)
			}
			_, err := p.finishAgentWait(ctx, early)
			return err
		})
		if err != nil {
			return "", err
		}
	}
	link, err := p.agent()
	if err != nil {
		return "", err
	}
	n := boot.UserNetwork()
	net := &agentlink.ResumeNetwork{Address: n.Address, Gateway: n.Gateway, DNS: n.DNS}
	if t := id.Tap; t != nil {
		net = &agentlink.ResumeNetwork{Address: t.Address, Gateway: t.Gateway, DNS: t.DNS, Search: t.Search, MAC: t.MAC}
	}
	p.mu.Lock()
	p.name = id.Hostname // a standby's records are the new VM's from here
	p.mu.Unlock()
	err = logging.Stage(ctx, "agent resume", func(ctx context.Context) error {
		r, err := link.Resume(ctx, agentlink.ResumeParams{Hostname: id.Hostname, MachineID: id.MachineID, BootID: id.BootID,
			Seed: id.Seed, TimeUnixNS: id.Time.UnixNano(), Network: net})
		if err == nil {
			logging.From(ctx).Debug().Float64("guest_ms", r.DurationMS).Msg("guest took its identity")
		}
		return err
	})
	if err != nil {
		return "", fmt.Errorf("give the restored guest its identity: %w", err)
	}
	p.mu.Lock()
	p.restored = false
	p.mu.Unlock()
	p.copyRecords()
	return id.BootID, nil
}

func (p *process) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.link != nil {
		p.link.Close()
		p.link = nil
	}
	if p.net != nil {
		p.net.Close()
		p.net = nil
	}
	return nil
}

// New is the engine of QEMU q, its VMs run with accel.
// guestLog, when not nil, writes the records each guest's agent sends.
func New(q *engine.QEMU, accel engine.Accel, guestLog *zerolog.Logger) *Engine {
	return &Engine{q: q, accel: accel, guestLog: guestLog}
}

// QEMU is the engine's QEMU and the accelerator it was given (host.accel
// reports them).
func (e *Engine) QEMU() (*engine.QEMU, engine.Accel) { return e.q, e.accel }
