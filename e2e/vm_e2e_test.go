package e2e_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/applets/daemon/imagestore"
	"banger/internal/api"
	"banger/rpc"
)

// needGuests skips the real-guest tests where the host cannot boot one
// (CI installs qemu-system-x86, qemu-utils, linux-image-amd64,
// busybox-static and e2fsprogs through packaging/test.sh, so they run
// there).
func needGuests(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("real guests take seconds each; -short skips them")
	}
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (packaging/test.sh installs it)", tool)
		}
	}
	if k, _ := filepath.Glob("/boot/vmlinuz-*"); len(k) == 0 {
		t.Skip("no host kernel in /boot (package linux-image-amd64)")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox (package busybox-static)")
	}
}

// daemon starts bangerd for the sandbox as a child the test can kill.
// hostKernel is the host kernel the daemon makes its default image of
// (the newest by version, as it picks): what a test imports with should
// boot like the default image does.
func hostKernel(t testing.TB) string {
	t.Helper()
	k, err := imagestore.HostKernel(imagestore.DefaultBootDir)
	if err != nil {
		t.Skip(err)
	}
	return k
}

func (s *sandbox) daemon() *exec.Cmd {
	s.t.Helper()
	cmd := s.startProcess(0, &bytes.Buffer{}, bangerBin, "bangerd", "--helper", "none")
	waitSocket(s.t, s.socket())
	return cmd
}

func (s *sandbox) call(method string, params, result any) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return (&rpc.Client{Socket: s.socket()}).Call(ctx, method, params, result)
}

// enginePIDs lists the QEMU processes of this sandbox's VMs: all its QEMU
// processes but the daemon's standby (restored ahead of time for the next
// create; the daemon ends it when it stops).
func (s *sandbox) enginePIDs() []int {
	standby := map[int]bool{}
	for _, pid := range s.standbyPIDs() {
		standby[pid] = true
	}
	var pids []int
	for _, pid := range s.allEnginePIDs() {
		if !standby[pid] {
			pids = append(pids, pid)
		}
	}
	return pids
}

// standbyPIDs lists the daemon's standby QEMU processes, from their
// pidfiles.
func (s *sandbox) standbyPIDs() []int {
	var pids []int
	files, _ := filepath.Glob(filepath.Join(s.state, "banger", "standby", "*", "qemu.pid"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitStandbysReady waits until the daemon's log says n standbys were
// made ready since it began (a standby's process exists well before).
func (s *sandbox) waitStandbysReady(t testing.TB, n int) {
	t.Helper()
	waitFor(t, time.Minute, func() bool {
		b, _ := os.ReadFile(s.daemonLog())
		return strings.Count(string(b), `"msg":"standby ready"`) >= n
	})
}

// allEnginePIDs lists the QEMU processes started for this sandbox.
func (s *sandbox) allEnginePIDs() []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(b, []byte("qemu-system")) && bytes.Contains(b, []byte(s.dir)) {
			var pid int
			for _, c := range e.Name() {
				pid = pid*10 + int(c-'0')
			}
			pids = append(pids, pid)
		}
	}
	return pids
}

func (s *sandbox) vmDirs() []string {
	dirs, _ := filepath.Glob(filepath.Join(s.state, "banger", "vms", "*"))
	return dirs
}

func TestVMLifecycleOnARealGuest(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()

	var vm api.VM
	s.banger("vm", "create", "--name", "demo", "--json").want(t, 0).json(t, &vm)
	if vm.Name != "demo" || vm.State != "running" || vm.PID == 0 || vm.BootID == "" {
		t.Fatalf("created: %+v", vm)
	}
	r := s.banger("vm", "create", "--name", "demo2", "--no-start")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "demo2" || !strings.Contains(r.stderr, "record vm") {
		t.Errorf("create --no-start: %+v", r)
	}

	var vms []api.VM
	s.banger("vm", "list", "--json").want(t, 0).json(t, &vms)
	if len(vms) != 2 || vms[0].State != "running" || vms[1].State != "stopped" {
		t.Errorf("list: %+v", vms)
	}
	if r := s.banger("vm", "logs", "demo").want(t, 0); !strings.Contains(r.stdout, "Linux version") {
		t.Errorf("console log lacks the kernel's banner:\n%.2000s", r.stdout)
	}

	// Bad inputs, each with its own code.
	s.banger("vm", "create", "--name", "Bad_Name").want(t, 2)
	s.banger("vm", "create", "--name", "x", "--image", "no-such-image").want(t, 4)
	s.banger("vm", "create", "--name", "demo").want(t, 5)
	s.banger("vm", "show", "ghost").want(t, 4)
	s.banger("vm", "stop", "demo2").want(t, 5)

	s.banger("vm", "stop", "demo").want(t, 0)
	s.banger("vm", "show", "--json", "demo").want(t, 0).json(t, &vm)
	if vm.State != "stopped" || syscall.Kill(vms[0].PID, 0) == nil {
		t.Errorf("after stop: %+v", vm)
	}
	s.banger("vm", "stop", "demo").want(t, 5)
	s.banger("vm", "start", "--json", "demo").want(t, 0).json(t, &vm)
	if vm.State != "running" || vm.BootID == vms[0].BootID {
		t.Errorf("after start: %+v (old boot %s)", vm, vms[0].BootID)
	}
	s.banger("vm", "restart", "--json", "demo").want(t, 0).json(t, &vm)
	if vm.State != "running" {
		t.Errorf("after restart: %+v", vm)
	}
	s.banger("vm", "kill", "demo").want(t, 0)
	s.banger("vm", "delete", "demo").want(t, 0)
	s.banger("vm", "prune").want(t, 0)
	s.banger("vm", "list", "--json").want(t, 0).json(t, &vms)
	if len(vms) != 0 || len(s.vmDirs()) != 0 || len(s.enginePIDs()) != 0 {
		t.Errorf("left behind: vms %+v, dirs %v, engines %v", vms, s.vmDirs(), s.enginePIDs())
	}
}

func TestCancelDuringCreateUndoesEverything(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	// Build the default image first, so the cancel lands in the boot.
	s.banger("vm", "create", "--name", "warm", "--no-start").want(t, 0)

	var op api.Operation
	if err := s.call(api.MethodVMCreateBegin, api.VMCreate{Name: "doomed", Image: api.TinyImage, Cold: true}, &op); err != nil {
		t.Fatal(err)
	}
	waitStage(t, s, op.ID, "wait for agent")
	s.banger("operation", "cancel", op.ID).want(t, 0)
	if err := s.call(api.MethodOperationWait, api.OperationWait{ID: op.ID, TimeoutMS: 60000}, &op); err != nil {
		t.Fatal(err)
	}
	if op.State != api.OpCanceled {
		t.Fatalf("operation: %+v", op)
	}
	s.banger("vm", "show", "doomed").want(t, 4)
	if len(s.enginePIDs()) != 0 || len(s.vmDirs()) != 1 {
		t.Errorf("left behind: engines %v, dirs %v", s.enginePIDs(), s.vmDirs())
	}
}

// waitStage waits until the operation runs the named stage.
func waitStage(t *testing.T, s *sandbox, id, stage string) {
	t.Helper()
	waitFor(t, 3*time.Minute, func() bool {
		var op api.Operation
		s.call(api.MethodOperationStatus, api.OperationID{ID: id}, &op)
		if op.Done() && op.State != "" {
			t.Fatalf("operation ended before %q: %+v", stage, op)
		}
		return op.Current == stage
	})
}

func TestDaemonKilledWhileAVMRunsAndWhileACreateRuns(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	d := s.daemon()
	var vm api.VM
	s.banger("vm", "create", "--name", "survivor", "--json").want(t, 0).json(t, &vm)

	var op api.Operation
	if err := s.call(api.MethodVMCreateBegin, api.VMCreate{Name: "interrupted", Image: api.TinyImage, Cold: true}, &op); err != nil {
		t.Fatal(err)
	}
	waitStage(t, s, op.ID, "wait for agent")
	d.Process.Signal(syscall.SIGKILL)
	waitFor(t, 10*time.Second, func() bool { return syscall.Kill(d.Process.Pid, 0) != nil })

	s.daemon()
	var again api.VM
	s.banger("vm", "show", "--json", "survivor").want(t, 0).json(t, &again)
	if again.State != "running" || again.BootID != vm.BootID || again.PID != vm.PID {
		t.Errorf("survivor after a daemon restart: %+v, was %+v", again, vm)
	}
	var failed api.Operation
	if err := s.call(api.MethodOperationStatus, api.OperationID{ID: op.ID}, &failed); err != nil || failed.State != api.OpFailed {
		t.Errorf("interrupted create: %+v %v", failed, err)
	}
	s.banger("vm", "show", "interrupted").want(t, 4)
	if pids := s.enginePIDs(); len(pids) != 1 || pids[0] != vm.PID {
		t.Errorf("engine processes after restart: %v, want only %d", pids, vm.PID)
	}
	// Still manageable.
	s.banger("vm", "stop", "survivor").want(t, 0)
	s.banger("vm", "delete", "survivor").want(t, 0)
	if len(s.enginePIDs()) != 0 || len(s.vmDirs()) != 0 {
		t.Errorf("left behind: engines %v, dirs %v", s.enginePIDs(), s.vmDirs())
	}
}

func TestImageImportListAndDeleteInUse(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	kernels := []string{hostKernel(t)}
	root := filepath.Join(s.dir, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc", "motd"), []byte("hello\n"), 0o644)

	s.banger("image", "import", "--kernel", kernels[0], "tiny").want(t, 2) // no root fs
	var im api.Image
	s.banger("image", "import", "--json", "--kernel", kernels[0], "--rootfs-dir", root, "tiny").want(t, 0).json(t, &im)
	if im.Name != "tiny" || !strings.HasPrefix(im.Digest, "sha256:") {
		t.Errorf("imported: %+v", im)
	}
	s.banger("image", "import", "--kernel", kernels[0], "--rootfs-dir", root, "tiny").want(t, 5)
	var ims []api.Image
	s.banger("image", "list", "--json").want(t, 0).json(t, &ims)
	if len(ims) != 1 || ims[0].Name != "tiny" {
		t.Errorf("list: %+v", ims)
	}
	s.banger("vm", "create", "--name", "user", "--image", "tiny", "--no-start").want(t, 0)
	if r := s.banger("image", "delete", "tiny").want(t, 5); !strings.Contains(r.stderr, "user") {
		t.Errorf("delete in use does not name the VM: %q", r.stderr)
	}
	s.banger("vm", "delete", "user").want(t, 0)
	s.banger("image", "delete", "tiny").want(t, 0)
	s.banger("image", "show", "tiny").want(t, 4)
}
