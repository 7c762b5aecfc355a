package e2e_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/applets/daemon/kernel"
	"banger/internal/api"
)

// TestKernelBuildBootsAGuest builds banger's microVM kernel from Debian's
// linux-source-6.1 and boots the default image with it to a command's
// output. It is long — the build alone is 10 to 25 minutes on 2 cores —
// so it runs only with BANGER_TEST_KERNEL_BUILD=1 (not in
// packaging/test.sh). It needs the packages docs/images-and-kernels.md, "Kernels", names.
func TestKernelBuildBootsAGuest(t *testing.T) {
	if os.Getenv("BANGER_TEST_KERNEL_BUILD") != "1" {
		t.Skip("builds a kernel (10-25 min); set BANGER_TEST_KERNEL_BUILD=1")
	}
	needGuests(t)
	if files, _ := filepath.Glob("/usr/src/linux-source-*.tar.xz"); len(files) == 0 {
		t.Skip("no kernel source: apt-get install linux-source-6.1 build-essential flex bison bc libelf-dev")
	}
	s := newSandbox(t)
	s.daemon()

	// A canceled build stops its compilers and leaves no tree behind.
	var op api.Operation
	if err := s.call(api.MethodKernelBuildBegin, api.KernelBuild{Name: "doomed"}, &op); err != nil {
		t.Fatal(err)
	}
	// A second build at once is refused.
	if err := s.call(api.MethodKernelBuildBegin, api.KernelBuild{Name: "other"}, &op); err == nil {
		t.Error("a second build at once was accepted")
	}
	waitStageLong(t, s, op.ID, "compile", 10*time.Minute)
	s.banger("operation", "cancel", op.ID).want(t, 0)
	if err := s.call(api.MethodOperationWait, api.OperationWait{ID: op.ID, TimeoutMS: 60000}, &op); err != nil {
		t.Fatal(err)
	}
	if op.State != api.OpCanceled {
		t.Fatalf("canceled build: %+v", op)
	}
	kernels := filepath.Join(s.state, "banger", "kernels")
	if left, _ := filepath.Glob(filepath.Join(kernels, ".build-*")); len(left) != 0 {
		t.Errorf("canceled build left %v", left)
	}
	if out, _ := exec.Command("pgrep", "-f", filepath.Join(kernels, ".build-doomed")).Output(); len(out) != 0 {
		t.Errorf("compilers still running after the cancel: %s", out)
	}
	s.banger("kernel", "show", "doomed").want(t, 4)

	// The real build.
	start := time.Now()
	if err := s.call(api.MethodKernelBuildBegin, api.KernelBuild{}, &op); err != nil {
		t.Fatal(err)
	}
	for !op.Done() {
		if err := s.call(api.MethodOperationWait, api.OperationWait{ID: op.ID, TimeoutMS: 30000}, &op); err != nil {
			t.Fatal(err)
		}
	}
	if op.State != api.OpSucceeded {
		t.Fatalf("build: %+v", op.Error)
	}
	t.Logf("kernel build: %s", time.Since(start).Round(time.Second))
	var k api.Kernel
	s.banger("kernel", "show", "--json", api.DefaultKernel).want(t, 0).json(t, &k)
	config, err := os.ReadFile(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	missing, err := kernel.MissingOptions(config, kernel.MicroVMFragment())
	if err != nil || len(missing) != 0 {
		t.Errorf("fragment options not in the built config: %v %v", missing, err)
	}

	// The default image is made with it, and boots to the agent.
	start = time.Now()
	r := s.banger("vm", "run", "--rm", "--", "uname", "-r").want(t, 0)
	if got := strings.TrimSpace(r.stdout); got != k.Release {
		t.Errorf("guest runs kernel %q, want the built %q", got, k.Release)
	}
	t.Logf("first vm run (default image made): %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	s.banger("vm", "run", "--rm", "--", "true").want(t, 0)
	t.Logf("vm run -- true with the built kernel: %s", time.Since(start).Round(time.Millisecond))

	// What container tools need is there.
	r = s.banger("vm", "run", "--rm", "--", "sh", "-c", "cat /proc/filesystems; ls /proc/self/ns").want(t, 0)
	for _, want := range []string{"overlay", "cgroup2", "devpts", "user", "pid", "net", "mnt", "uts", "ipc"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("guest lacks %s:\n%s", want, r.stdout)
		}
	}

	// An image can name it; a kernel an image uses cannot be deleted.
	root := filepath.Join(s.dir, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	s.banger("image", "import", "--kernel-name", api.DefaultKernel, "--rootfs-dir", root, "named").want(t, 0)
	if r := s.banger("kernel", "delete", api.DefaultKernel).want(t, 5); !strings.Contains(r.stderr, "named") {
		t.Errorf("delete in use does not name the image: %q", r.stderr)
	}
}

// waitStageLong waits up to d until the operation runs the named stage.
func waitStageLong(t *testing.T, s *sandbox, id, stage string, d time.Duration) {
	t.Helper()
	waitFor(t, d, func() bool {
		var op api.Operation
		s.call(api.MethodOperationStatus, api.OperationID{ID: id}, &op)
		if op.Done() && op.State != "" {
			t.Fatalf("operation ended before %q: %+v", stage, op)
		}
		return op.Current == stage
	})
}
