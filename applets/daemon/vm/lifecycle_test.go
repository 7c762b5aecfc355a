package vm

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/applets/daemon/state"
	"banger/applets/daemon/warm"
	"banger/internal/api"
)

// The VM lifecycle without QEMU: a machine that "runs" at once and a guest
// agent that answers as told. These tests cover what the end-to-end tests
// (which boot real guests) cover slowly: that a create runs its steps in
// order, records what it should, and undoes each step when a later one
// fails. They stand in for the engine, not for a boundary banger cannot
// reach: the real engine is tested with real guests in applets/.

// machineEngine launches fakeMachines.
type machineEngine struct {
	fakeEngine
	mu      sync.Mutex
	procs   []*fakeMachine
	waitErr error // what each machine's agent answers WaitAgent
	loadErr error // what each machine answers LoadState
	// standbyFails is how many launches of a standby fail from now on.
	standbyFails int
}

func (e *machineEngine) Launch(ctx context.Context, spec LaunchSpec) (Process, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.launched = append(e.launched, spec)
	if e.launchErr != nil {
		return nil, e.launchErr
	}
	if spec.AwaitState && e.standbyFails > 0 {
		e.standbyFails--
		return nil, errors.New("QEMU did not answer in time")
	}
	m := &fakeMachine{pid: 1000 + len(e.procs), exited: make(chan struct{}), waitErr: e.waitErr, loadErr: e.loadErr, ports: map[int]bool{}}
	e.procs = append(e.procs, m)
	return m, nil
}

func (e *machineEngine) machines() []*fakeMachine {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.procs)
}

// fakeMachine is a running VM whose guest agent is ready at once.
type fakeMachine struct {
	pid              int
	waitErr, loadErr error

	mu     sync.Mutex
	exited chan struct{}
	killed bool
	closed bool
	ports  map[int]bool // published host ports
	allow  []int
}

func (m *fakeMachine) PID() int                { return m.pid }
func (m *fakeMachine) Exited() <-chan struct{} { return m.exited }

func (m *fakeMachine) end() {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.exited:
	default:
		close(m.exited)
	}
}

func (m *fakeMachine) Kill(ctx context.Context) error {
	m.mu.Lock()
	m.killed = true
	m.mu.Unlock()
	m.end()
	return nil
}

func (m *fakeMachine) Shutdown(ctx context.Context) error { m.end(); return nil }

func (m *fakeMachine) AddForward(ctx context.Context, f state.PortForward) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ports[f.HostPort] = true
	return nil
}

func (m *fakeMachine) RemoveForward(ctx context.Context, f state.PortForward) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.ports, f.HostPort)
	return nil
}

func (m *fakeMachine) AllowHost(ports []int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.allow = ports
	return nil
}

func (m *fakeMachine) SaveState(ctx context.Context, path string) error {
	return os.WriteFile(path, nil, 0o600)
}
func (m *fakeMachine) Continue(ctx context.Context) error               { return nil }
func (m *fakeMachine) Pause(ctx context.Context) error                  { return nil }
func (m *fakeMachine) LoadState(ctx context.Context, run bool) error    { return m.loadErr }
func (m *fakeMachine) StartLoad(ctx context.Context, path string) error { return nil }
func (m *fakeMachine) Moved(dir string)                                 {}
func (m *fakeMachine) CheckStandby(ctx context.Context) error           { return nil }

func (m *fakeMachine) WaitAgent(ctx context.Context) (string, error) {
	if m.waitErr != nil {
		return "", m.waitErr
	}
	return "0b0e5c2d-6a1f-4c8e-9d3b-7f2a1e4c5d6f", nil
}

func (m *fakeMachine) Resume(ctx context.Context, id GuestIdentity) (string, error) {
	return m.WaitAgent(ctx)
}

func (m *fakeMachine) OpenSession(ctx context.Context, method string, params any) (net.Conn, error) {
	return nil, errors.New("no sessions here")
}

func (m *fakeMachine) SignalSession(ctx context.Context, opID string, sig int) error { return nil }

func (m *fakeMachine) GuestPorts(ctx context.Context) ([]api.GuestPort, error) { return nil, nil }

func (m *fakeMachine) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

func lifecycleService(t *testing.T) (*Service, *machineEngine) {
	t.Helper()
	s, _, _ := testService(t)
	e := &machineEngine{}
	s.engine = e
	return s, e
}

func stageNames(op api.Operation) []string {
	var names []string
	for _, st := range op.Stages {
		names = append(names, st.Name+" "+st.State)
	}
	return names
}

// A cold create boots: its stages in order, the VM running with the boot
// id its agent reported, launched with its user network (ports and
// allowed host ports), its process watched.
func TestCreateBootsAVM(t *testing.T) {
	s, e := lifecycleService(t)
	op := create(t, s, api.VMCreate{Name: "box", Cold: true, AllowHost: []int{8080},
		Publish: []api.PortForward{{HostPort: freeLoopbackPort(t), GuestPort: 80}}})
	if op.State != api.OpSucceeded {
		t.Fatalf("create: %+v", op)
	}
	want := []string{"resolve image done", "record vm done", "make disk done", "launch done", "wait for agent done"}
	if got := stageNames(op); !slices.Equal(got, want) {
		t.Errorf("stages %q, want %q", got, want)
	}
	vm, err := s.db.GetVM(context.Background(), "box")
	if err != nil || vm.State != state.VMRunning || vm.BootID == "" || vm.PID != 1000 {
		t.Fatalf("the VM: %+v, %v", vm, err)
	}
	if len(e.launched) != 1 || e.launched[0].User == nil || !slices.Equal(e.launched[0].User.AllowHost, []int{8080}) ||
		len(e.launched[0].User.Ports) != 1 || e.launched[0].Tap != nil {
		t.Errorf("launched: %+v", e.launched)
	}
	if _, err := os.Stat(e.launched[0].Disk); err != nil {
		t.Errorf("its disk: %v", err)
	}
	if s.proc("box") == nil {
		t.Error("the running VM's process is not kept")
	}

	// Stopped and deleted: the process ends, the record and the
	// directory go.
	if _, err := s.Stop(context.Background(), api.VMStop{Name: "box"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(context.Background(), api.VMDelete{Name: "box"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.GetVM(context.Background(), "box"); err == nil {
		t.Error("the deleted VM's record is there")
	}
	if _, err := os.Stat(vm.InstanceDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the deleted VM's directory: %v", err)
	}
}

// A guest that never reports ready fails the create, and every step is
// undone: the process is killed and let go, the directory and the record
// are gone.
func TestCreateUndoesItsStepsWhenTheGuestFails(t *testing.T) {
	s, e := lifecycleService(t)
	e.waitErr = errors.New("the guest panicked")
	op := create(t, s, api.VMCreate{Name: "box", Cold: true})
	if op.State != api.OpFailed {
		t.Fatalf("create: %+v", op)
	}
	want := []string{"resolve image done", "record vm undone", "make disk undone", "launch undone", "wait for agent failed",
		"undo launch done", "undo make disk done", "undo record vm done"}
	if got := stageNames(op); !slices.Equal(got, want) {
		t.Errorf("stages %q, want %q", got, want)
	}
	ms := e.machines()
	if len(ms) != 1 || !ms[0].killed || !ms[0].closed {
		t.Errorf("the machine: %+v", ms)
	}
	if _, err := s.db.GetVM(context.Background(), "box"); err == nil {
		t.Error("the failed VM's record is there")
	}
	if _, err := os.Stat(e.launched[0].InstanceDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the failed VM's directory: %v", err)
	}
	if s.proc("box") != nil {
		t.Error("the failed VM's process is kept")
	}
}

// A VM whose guest powers off on its own is recorded stopped.
func TestAGuestThatEndsIsRecordedStopped(t *testing.T) {
	s, e := lifecycleService(t)
	if op := create(t, s, api.VMCreate{Name: "box", Cold: true}); op.State != api.OpSucceeded {
		t.Fatalf("create: %+v", op)
	}
	e.machines()[0].end()
	waitUntil(t, func() bool {
		vm, err := s.db.GetVM(context.Background(), "box")
		return err == nil && vm.State == state.VMStopped
	})
}

func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitUntil polls ok for a few seconds.
func waitUntil(t *testing.T, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// warmService is a lifecycleService with warm starts: snapshots saved
// after a boot, no standbys.
func warmService(t *testing.T) (*Service, *machineEngine) {
	t.Helper()
	s, e := lifecycleService(t)
	store, err := warm.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(kernel, []byte("a kernel"), 0o644)
	s.images = kernelImages{kernel}
	s.warm = &warmStarts{store: store, auto: true, agentSum: func() (string, error) { return "", nil }, pools: newStandbyPools(0),
		memAvailable: func() (int64, error) { return 1 << 40, nil }}
	return s, e
}

// kernelImages are fakeImages with a kernel file, which a snapshot's key
// names.
type kernelImages struct{ kernel string }

func (k kernelImages) Resolve(ctx context.Context, name string) (Image, error) {
	img, err := fakeImages{}.Resolve(ctx, name)
	img.Kernel = k.kernel
	return img, err
}
func (kernelImages) Exists(ctx context.Context, name string) error { return nil }
func (kernelImages) ExecDefaults(context.Context, string) (api.OCIImage, error) {
	return api.OCIImage{}, nil
}

func (kernelImages) Overlay(ctx context.Context, img Image, dst string, diskMiB int) error {
	return fakeImages{}.Overlay(ctx, img, dst, diskMiB)
}

// The warm ladder: the first VM boots and saves the image's snapshot,
// the next restores it; a snapshot that does not load falls back to a
// boot, which saves a new one.
func TestWarmLadder(t *testing.T) {
	s, e := warmService(t)
	op := create(t, s, api.VMCreate{Name: "first"})
	want := []string{"resolve image done", "record vm done", "make disk done", "launch done", "wait for agent done", "save warm snapshot done"}
	if got := stageNames(op); op.State != api.OpSucceeded || !slices.Equal(got, want) {
		t.Fatalf("the first create: %s, stages %q, want %q", op.State, got, want)
	}

	op = create(t, s, api.VMCreate{Name: "second"})
	want = []string{"resolve image done", "record vm done", "make disk done", "launch done", "restore done", "resume agent done"}
	if got := stageNames(op); op.State != api.OpSucceeded || !slices.Equal(got, want) {
		t.Fatalf("the second create: %s, stages %q, want %q", op.State, got, want)
	}
	if got := e.launched[1].Incoming; got == "" {
		t.Error("the restore's launch loads no state")
	}

	e.loadErr = errors.New("not a migration stream")
	op = create(t, s, api.VMCreate{Name: "third"})
	want = []string{"resolve image done", "record vm done", "make disk undone", "launch undone", "restore failed",
		"undo launch done", "undo make disk done", "fall back to boot done",
		"make disk done", "launch done", "wait for agent done", "save warm snapshot done"}
	if got := stageNames(op); op.State != api.OpSucceeded || !slices.Equal(got, want) {
		t.Fatalf("the third create: %s, stages %q, want %q", op.State, got, want)
	}
	if ms := e.machines(); !ms[2].killed {
		t.Error("the process that failed to restore was not killed")
	}
}

// A standby that fails to be made (a host under load) is tried again: the
// pool heals without waiting for the next create, and says why it was
// empty until then.
func TestAFailedStandbyIsTriedAgain(t *testing.T) {
	s, e := warmService(t)
	s.warm.pools.perImage = 1
	e.mu.Lock()
	e.standbyFails = standbyAttempts - 1
	e.mu.Unlock()
	if op := create(t, s, api.VMCreate{Name: "first"}); op.State != api.OpSucceeded {
		t.Fatalf("create: %+v", op)
	}
	deadline := time.Now().Add(time.Duration(standbyAttempts*standbyAttempts) * standbyRetryPause)
	for s.StandbyStatus(api.DefaultImage).Ready == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no standby after %d failures: %+v", standbyAttempts-1, s.StandbyStatus(api.DefaultImage))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := s.StandbyStatus(api.DefaultImage); st.Skipped != "" {
		t.Errorf("a ready standby still says why there is none: %q", st.Skipped)
	}
	e.mu.Lock()
	left := e.standbyFails
	e.mu.Unlock()
	if left != 0 {
		t.Errorf("%d failures not tried", left)
	}

	// One failure too many leaves the pool empty, and says why.
	key, _ := s.warm.pools.keyOf(api.DefaultImage)
	sb := s.takeStandby(context.Background(), &warmPlan{key: key, usable: true}, state.VM{Network: api.NetworkUser})
	if sb == nil {
		t.Fatal("no standby to take")
	}
	s.discardStandby(context.Background(), sb)
	e.mu.Lock()
	e.standbyFails = standbyAttempts
	e.mu.Unlock()
	s.fillStandby(context.Background(), key, Image{Name: api.DefaultImage}, nil)
	st := s.StandbyStatus(api.DefaultImage)
	if st.Ready != 0 || st.Filling || !strings.Contains(st.Skipped, "QEMU did not answer in time") {
		t.Errorf("after %d failures: %+v", standbyAttempts, st)
	}
}
