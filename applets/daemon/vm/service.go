package vm

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"banger/applets/daemon/operation"
	"banger/applets/daemon/state"
	"banger/internal/api"
	"banger/internal/layout"
	"banger/rpc"
)

// Bounds of the VM lifecycle.
const (
	bootTimeout = 3 * time.Minute // TCG boots take seconds; a hang must end
	killTimeout = 15 * time.Second
)

// Service runs the VM methods: the rows in the state database, the
// engine processes and the instance directories, kept in step.
type Service struct {
	db     *state.DB
	ops    *operation.Registry
	engine Engine
	images Images
	root   string         // instance directories: root/<vm id>
	helper Helper         // the root helper: bridges, taps, NAT
	bridge BridgeNet      // where bridged VMs go
	warm   *warmStarts    // nil: every VM boots
	log    zerolog.Logger // for work no call asked for (a VM that ended on its own)
	// dnsOpened is set once this daemon ensured the guests' DNS redirect:
	// it takes it away when it stops (closeDNS).
	dnsOpened atomic.Bool

	mu    sync.Mutex              // guards busy and procs
	busy  map[string]*busyWith    // VM name -> what is being done to it
	procs map[string]*runningProc // VM name -> its running engine process
}

// runningProc is a running VM's engine process and the watch on its exit
// (exit.go), which ends when the process is replaced or forgotten.
type runningProc struct {
	proc    Process
	unwatch chan struct{}
}

func newVMService(db *state.DB, ops *operation.Registry, eng Engine, images Images, root string, helper Helper, bridge BridgeNet) *Service {
	return &Service{db: db, ops: ops, engine: eng, images: images, root: root, helper: helper, bridge: bridge, log: zerolog.Nop(),
		busy: map[string]*busyWith{}, procs: map[string]*runningProc{}}
}

// claim marks the VM busy with what, so two changes of one VM never run at
// once; the second gets a conflict that says what is going on.
func (s *Service) claim(name, what string) (release func(), err error) {
	return s.claimAs(name, what, false)
}

// claimBrief is a claim for a change no one asked for and that takes
// milliseconds (recording that a guest ended on its own): a claim that
// comes meanwhile waits for it instead of failing.
func (s *Service) claimBrief(name, what string) (release func(), err error) {
	return s.claimAs(name, what, true)
}

// briefWait bounds how long a claim waits for a brief one.
const briefWait = 5 * time.Second

func (s *Service) claimAs(name, what string, brief bool) (release func(), err error) {
	deadline := time.Now().Add(briefWait)
	for {
		s.mu.Lock()
		b := s.busy[name]
		if b == nil {
			b = &busyWith{what: what, brief: brief, done: make(chan struct{})}
			s.busy[name] = b
			s.mu.Unlock()
			return func() {
				s.mu.Lock()
				delete(s.busy, name)
				s.mu.Unlock()
				close(b.done)
			}, nil
		}
		s.mu.Unlock()
		if !b.brief || time.Now().After(deadline) {
			return nil, rpc.Errorf(rpc.CodeConflict, "vm %q is busy (%s); wait for that to finish", name, b.what)
		}
		select {
		case <-b.done:
		case <-time.After(time.Until(deadline)):
		}
	}
}

// busyWith is what a VM is busy with, and when it ends.
type busyWith struct {
	what  string
	brief bool          // claimBrief's: others wait for it
	done  chan struct{} // closed when it ends
}

func (s *Service) proc(name string) Process {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.procs[name]; r != nil {
		return r.proc
	}
	return nil
}

// setProc records the running process of a VM (nil: none), closing the
// one it replaces, and watches for its exit.
func (s *Service) setProc(name string, p Process) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.procs[name]
	if old != nil && old.proc == p {
		return
	}
	if old != nil {
		close(old.unwatch)
		old.proc.Close()
		delete(s.procs, name)
	}
	if p != nil {
		r := &runningProc{proc: p, unwatch: make(chan struct{})}
		s.procs[name] = r
		go s.watchExit(name, r)
	}
}

// forgetProc drops p as the VM's process, if it is, without closing it
// (its caller does).
func (s *Service) forgetProc(name string, p Process) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.procs[name]; r != nil && r.proc == p {
		close(r.unwatch)
		delete(s.procs, name)
	}
}

func toAPI(v state.VM) api.VM {
	return api.VM{ID: v.ID, Name: v.Name, Image: v.Image, State: v.State, CPUs: v.CPUs, MemoryMiB: v.MemoryMiB,
		DiskMiB: v.DiskMiB, Network: v.Network, Address: v.Address, DNSName: dnsName(v), Created: v.Created, LastError: v.LastError, PID: v.PID,
		BootID: v.BootID, InstanceDir: v.InstanceDir, Ports: portsToAPI(v.Ports),
		AllowHost: v.AllowHost}
}

// List answers vm.list.
func (s *Service) List(ctx context.Context, _ rpc.NoParams) ([]api.VM, error) {
	vms, err := s.db.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.VM, 0, len(vms))
	for _, v := range vms {
		out = append(out, toAPI(v))
	}
	return out, nil
}

// Show answers vm.show.
func (s *Service) Show(ctx context.Context, p api.VMRef) (api.VM, error) {
	vm, err := s.db.GetVM(ctx, p.Name)
	return toAPI(vm), err
}

// maxLogChunk bounds one vm.logs answer.
const maxLogChunk = 256 << 10

// Logs answers vm.logs: a page of the VM's console.
func (s *Service) Logs(ctx context.Context, p api.VMLogs) (api.VMLogsResult, error) {
	vm, err := s.db.GetVM(ctx, p.Name)
	if err != nil {
		return api.VMLogsResult{}, err
	}
	res := api.VMLogsResult{Next: p.Offset, Running: vm.State == state.VMRunning || vm.State == state.VMStarting}
	f, err := os.Open(filepath.Join(vm.InstanceDir, layout.Console))
	if errors.Is(err, os.ErrNotExist) {
		return res, nil
	}
	if err != nil {
		return res, err
	}
	defer f.Close()
	limit := p.Limit
	if limit <= 0 || limit > maxLogChunk {
		limit = maxLogChunk
	}
	if fi, err := f.Stat(); err == nil && p.Offset > fi.Size() {
		// The console was trimmed (console.go) past where the reader
		// was: go on from the start of what is kept.
		p.Offset = 0
	}
	if data, err := f.Seek(p.Offset, unix.SEEK_DATA); err == nil && data > p.Offset {
		p.Offset = data // a trimmed console's hole
	}
	buf := make([]byte, limit)
	n, err := f.ReadAt(buf, p.Offset)
	if err != nil && !errors.Is(err, io.EOF) {
		return res, err
	}
	res.Data, res.Next = buf[:n], p.Offset+int64(n)
	return res, nil
}

// Shutdown releases the daemon's handles on running VMs; the VMs keep
// running (they are detached) and the next daemon re-attaches.
func (s *Service) Shutdown() {
	s.closeStandbys(context.Background())
	s.closeDNS()
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, r := range s.procs {
		close(r.unwatch)
		r.proc.Close()
		delete(s.procs, name)
	}
}
