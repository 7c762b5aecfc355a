package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"banger/applets/agent/boot"
	"banger/applets/daemon/engine"
	"banger/applets/daemon/imagestore"
	"banger/applets/daemon/kernel/kernelbuild"
	"banger/applets/daemon/operation"
	"banger/applets/daemon/state"
	"banger/applets/daemon/usernet"
	"banger/applets/daemon/warm"
	"banger/internal/agentlink"
	"banger/internal/api"
	"banger/internal/layout"
	"banger/internal/printable"
	"banger/logging"
	"banger/rpc"
)

// The adapters that wire the QEMU engine, the agent link and the image
// store into the VM service's interfaces (deps.go).

// qemuEngine is the vmEngine of QEMU's microvm.
type qemuEngine struct {
	q     *engine.QEMU
	accel engine.Accel
}

func (e *qemuEngine) Launch(ctx context.Context, spec launchSpec) (vmProcess, error) {
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
			user = &userNet{}
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
			err = fmt.Errorf("%w: %w", errExitedAtStart, err)
		}
		return nil, err
	}
	p := &qemuProcess{inst: inst}
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
func newUserNet(ctx context.Context, user userNet, strict bool) (*usernet.Network, error) {
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
func (p *qemuProcess) connectNet(ctx context.Context, un *usernet.Network) error {
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

func (e *qemuEngine) Attach(ctx context.Context, dir string, user *userNet) (vmProcess, error) {
	inst, err := engine.Attach(ctx, dir)
	if err != nil {
		return nil, err
	}
	p := &qemuProcess{inst: inst}
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
		p.link = link
	}
	return p, nil
}

func (e *qemuEngine) AttachPaused(ctx context.Context, dir string) (vmProcess, error) {
	inst, err := engine.Attach(ctx, dir)
	if err != nil {
		return nil, err
	}
	return &qemuProcess{inst: inst}, nil
}

func (e *qemuEngine) Leftovers(dir string) error { return engine.CleanRuntime(dir) }

// Identity is QEMU's binary, the accelerator setting and the user
// network's card: a state saved under TCG does not load under KVM, nor
// one saved with QEMU's own user network (slirp) into a stream netdev.
func (e *qemuEngine) Identity() (string, error) {
	bin, err := e.q.Path()
	if err != nil {
		return "", err
	}
	id, err := warm.FileID(bin)
	return id + " accel=" + string(e.accel) + " usernet=stream", err
}

// qemuProcess is one running QEMU and, once ready, its agent link.
type qemuProcess struct {
	inst *engine.Instance

	mu   sync.Mutex // guards link, net and early
	link *agentlink.Link
	// net is a user-mode VM's network, nil for a bridged VM.
	net *usernet.Network
	// early is the handshake LoadState began, for Resume to finish.
	early agentWait
}

func (p *qemuProcess) PID() int { return p.inst.PID }

func (p *qemuProcess) Exited() <-chan struct{} { return p.inst.Done() }

func (p *qemuProcess) CheckStandby(ctx context.Context) error {
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

func (p *qemuProcess) WaitAgent(ctx context.Context) (string, error) {
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
func (p *qemuProcess) startAgentWait(ctx context.Context) agentWait {
	ch := make(agentWait, 1)
	go func() {
		l, err := agentlink.Wait(ctx, p.inst.AgentSocket())
		ch <- agentWaitResult{l, err}
	}()
	return ch
}

// finishAgentWait waits for the handshake startAgentWait began, and keeps
// the link.
func (p *qemuProcess) finishAgentWait(ctx context.Context, ch agentWait) (string, error) {
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
		p.mu.Lock()
		p.link = r.link
		p.mu.Unlock()
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
func (p *qemuProcess) exitedDuringBoot() error {
	return rpc.Errorf(rpc.CodeOperationFailed, "the VM's engine exited during boot; its console ended with: %s; qemu said: %s",
		lastLines(p.inst.ConsoleLog(), 6), lastLines(filepath.Join(p.inst.Dir, layout.EngineLog), 3))
}

// lastLines is the last n non-empty lines of a file, joined with " | ",
// read from its last 4 KiB.
func lastLines(path string, n int) string {
	tail, err := readTail(path, 4096)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return lastLinesOf(tail, n)
}

// readTail is the last max bytes of a file.
func readTail(path string, max int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		f.Seek(fi.Size()-max, io.SeekStart)
	}
	b, err := io.ReadAll(io.LimitReader(f, max))
	return string(b), err
}

// consoleTail is the end of a VM's console (nothing when it has none).
func consoleTail(instanceDir string) string {
	tail, _ := readTail(filepath.Join(instanceDir, layout.Console), 8192)
	return tail
}

// lastLinesOf is the last n non-empty lines of text, joined with " | ",
// without control characters: the text is a guest's (its console).
func lastLinesOf(text string, n int) string {
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if l = printable.String(l, 0); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return "(nothing)"
	}
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

func (p *qemuProcess) Shutdown(ctx context.Context) error {
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

func (p *qemuProcess) Kill(ctx context.Context) error {
	err := p.inst.Kill(ctx)
	if errors.Is(err, engine.ErrNotRunning) {
		return nil
	}
	return err
}

// agent is the VM's agent link, once the guest has been ready.
func (p *qemuProcess) agent() (*agentlink.Link, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.link == nil {
		return nil, rpc.Errorf(rpc.CodeUnavailable, "the VM's agent is not connected (restart the VM)")
	}
	return p.link, nil
}

func (p *qemuProcess) OpenSession(ctx context.Context, method string, params any) (net.Conn, error) {
	link, err := p.agent()
	if err != nil {
		return nil, err
	}
	return link.OpenSession(ctx, method, params)
}

func (p *qemuProcess) AddForward(ctx context.Context, f state.PortForward) error {
	un, err := p.userNet()
	if err != nil {
		return err
	}
	return un.Expose(usernet.Forward(f))
}

func (p *qemuProcess) RemoveForward(ctx context.Context, f state.PortForward) error {
	un, err := p.userNet()
	if err != nil {
		return err
	}
	return un.Unexpose(usernet.Forward(f))
}

func (p *qemuProcess) AllowHost(ports []int) error {
	un, err := p.userNet()
	if err != nil {
		return err
	}
	return un.AllowHost(ports)
}

// userNet is the VM's user-mode network.
func (p *qemuProcess) userNet() (*usernet.Network, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.net == nil {
		return nil, rpc.Errorf(rpc.CodeInvalidParams, "the VM has no user-mode network")
	}
	return p.net, nil
}

func (p *qemuProcess) SignalSession(ctx context.Context, opID string, sig int) error {
	link, err := p.agent()
	if err != nil {
		return err
	}
	return link.Signal(ctx, opID, sig)
}

func (p *qemuProcess) GuestPorts(ctx context.Context) ([]api.GuestPort, error) {
	link, err := p.agent()
	if err != nil {
		return nil, err
	}
	return link.Ports(ctx)
}

func (p *qemuProcess) Moved(dir string) { p.inst.Moved(dir) }

func (p *qemuProcess) SaveState(ctx context.Context, path string) error {
	return p.inst.SaveState(ctx, path)
}

func (p *qemuProcess) Continue(ctx context.Context) error { return p.inst.Continue(ctx) }

func (p *qemuProcess) Pause(ctx context.Context) error { return p.inst.Pause(ctx) }

// linked says whether the agent link is up: a standby's is, from the
// hello it said before it was taken.
func (p *qemuProcess) linked() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.link != nil
}

func (p *qemuProcess) LoadState(ctx context.Context, run bool) error {
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

func (p *qemuProcess) StartLoad(ctx context.Context, path string) error {
	return p.inst.StartLoad(ctx, path)
}

func (p *qemuProcess) Resume(ctx context.Context, id guestIdentity) (string, error) {
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
	return id.BootID, nil
}

func (p *qemuProcess) Close() error {
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

// storeImages is the vmImages of the image store; the default image is
// assembled from the host on first use.
type storeImages struct {
	store   *imagestore.Store
	agent   string             // this binary, placed into images
	kernels *kernelbuild.Store // a built default kernel is the default image's
	// agentSum is the sha256 of agent, as image manifests record it.
	agentSum func() (string, error)
	// usedBy lists the VMs of an image.
	usedBy func(ctx context.Context, image string) ([]string, error)

	defaultMu sync.Mutex // one check-and-rebuild of the default image at a time
}

func (s *storeImages) Resolve(ctx context.Context, name string) (vmImage, error) {
	var img imagestore.Image
	var err error
	if name == api.DefaultImage {
		img, err = s.ensureDefault(ctx)
	} else {
		img, err = s.get(ctx, name)
	}
	if err != nil {
		return vmImage{}, err
	}
	return vmImage{Name: img.Name, Digest: img.Digest, SizeBytes: img.SizeBytes, Created: img.Created,
		Kernel: img.KernelPath, Initrd: img.InitrdPath, Rootfs: img.RootfsPath, KernelArgs: img.KernelArgs,
		AgentSHA256: img.Agent.SHA256}, nil
}

// ensureDefault returns the default image, made anew when it carries
// another banger than this one and no VM uses it: a guest must run the
// agent its daemon speaks to (an upgrade adds methods, such as the warm
// starts' agent.resume).
func (s *storeImages) ensureDefault(ctx context.Context) (imagestore.Image, error) {
	s.defaultMu.Lock()
	defer s.defaultMu.Unlock()
	spec := imagestore.DefaultSpec{AgentBinary: s.agent, Kernel: defaultImageKernel(s.kernels)}
	img, err := s.store.EnsureDefault(ctx, spec)
	if err != nil || s.agentSum == nil || s.usedBy == nil {
		return img, err
	}
	sum, err := s.agentSum()
	if err != nil || img.Agent.SHA256 == sum {
		return img, nil
	}
	log := logging.From(ctx)
	if err := s.store.Delete(ctx, img.Name, s.usedBy); err != nil {
		log.Warn().Err(err).Msg("the default image carries another banger's agent, and is kept: VMs use it")
		return img, nil
	}
	log.Info().Str("was", img.Agent.SHA256).Str("now", sum).Msg("default image made anew: it carried another banger's agent")
	return s.store.EnsureDefault(ctx, spec)
}

func (s *storeImages) Overlay(ctx context.Context, img vmImage, dst string, diskMiB int) error {
	return s.store.Overlay(ctx, img.Name, dst, diskMiB)
}

// Exists reports whether an image is known, without building the default.
func (s *storeImages) Exists(ctx context.Context, name string) error {
	if name == api.DefaultImage {
		return nil
	}
	_, err := s.get(ctx, name)
	return err
}

// get reads an image, with a not-found message that says where to look.
func (s *storeImages) get(ctx context.Context, name string) (imagestore.Image, error) {
	img, err := s.store.Get(ctx, name)
	if rpc.CodeOf(err) == rpc.CodeNotFound {
		err = rpc.Errorf(rpc.CodeNotFound, "image %q not found; `banger image list` shows the images", name)
	}
	return img, err
}

// Config is what the daemon's start gives the VM service: its settings,
// the stores it has opened, and the VMs a previous daemon left.
type Config struct {
	StateDir string // the engine's state and the VMs live under it
	Accel    engine.Accel
	Warm     WarmOptions
	DB       *state.DB
	Ops      *operation.Registry
	Helper   vmHelper
	Bridge   BridgeNet
	// Images, Kernels and Snapshots are the daemon's stores.
	Images    *imagestore.Store
	Kernels   *kernelbuild.Store
	Snapshots *warm.Store
	// Agent is this binary, the guests' agent; AgentSum its sha256.
	Agent    string
	AgentSum func() (string, error)
	// Interrupted names the creates a previous daemon left half done.
	Interrupted map[string]bool
}

// New is the VM service of a daemon: the QEMU engine under the state
// directory, with the VMs a previous daemon left reconciled and its
// standbys swept.
func New(ctx context.Context, c Config) (*Service, error) {
	eng := &qemuEngine{q: &engine.QEMU{StateDir: c.StateDir}, accel: c.Accel}
	images := &storeImages{store: c.Images, agent: c.Agent, kernels: c.Kernels, agentSum: c.AgentSum, usedBy: c.DB.ImageUsers}
	s := newVMService(c.DB, c.Ops, eng, images, filepath.Join(c.StateDir, layout.VMsDir), c.Helper, c.Bridge)
	s.log = *logging.From(ctx)
	var err error
	if s.warm, err = newWarmStarts(c.Snapshots, c.Warm, c.AgentSum); err != nil {
		return nil, err
	}
	if err := s.reconcile(ctx, c.Interrupted); err != nil {
		return nil, fmt.Errorf("reconcile VMs: %w", err)
	}
	s.sweepStandbys(ctx)
	return s, nil
}

// QEMU is the service's engine when it is QEMU (host.accel reports its
// accelerator), and the accelerator it was started with.
func (s *Service) QEMU() (*engine.QEMU, engine.Accel, bool) {
	e, ok := s.engine.(*qemuEngine)
	if !ok {
		return nil, "", false
	}
	return e.q, e.accel, true
}

// defaultImageKernel is the kernel the default image is assembled from:
// the built kernel named api.DefaultKernel when there is one (it boots
// in half the time of the distribution's), else "" for the host's.
func defaultImageKernel(store *kernelbuild.Store) string {
	if store == nil {
		return ""
	}
	k, err := store.Get(api.DefaultKernel)
	if err != nil {
		return ""
	}
	return k.VmlinuxPath
}
