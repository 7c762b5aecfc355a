package agentlink_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/applets/agent/boot"
	"banger/applets/daemon/engine"
	"banger/applets/daemon/imagestore"
	"banger/applets/daemon/kernel"
	"banger/internal/agentlink"
	"banger/internal/layout"
)

// The real-guest tests of this package boot Debian's kernel under QEMU
// with the banger binary as the guest's agent, as the daemon will. What
// they need is built once, on first use, into one temporary directory.

var (
	guestOnce sync.Once
	guest     *guestFiles
	guestErr  error // a reason to skip, or a failure
	guestSkip bool
	tmpRoot   string
)

// guestFiles are the image of the real-guest tests.
type guestFiles struct {
	Dir     string
	Banger  string
	Vmlinux string
	Initrd  string
	Base    string // the read-only root ext4
}

// launcherEnv makes the test binary a "daemon" that launches one VM from
// the spec in the variable, waits for its agent, prints what it got and
// exits with the VM running and the link open, as a killed daemon does.
const launcherEnv = "BANGER_TEST_LAUNCH_SPEC"

// launched is what the launcher prints.
type launched struct {
	PID    int    `json:"pid"`
	BootID string `json:"boot_id"`
}

func runLauncher(specJSON string) int {
	var spec engine.Spec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	inst, err := (&engine.QEMU{}).Launch(ctx, spec)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	link, err := agentlink.Wait(ctx, inst.AgentSocket())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		inst.Kill(context.Background())
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(launched{PID: inst.PID, BootID: link.Hello().BootID})
	return 0
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(launcherEnv); spec != "" {
		os.Exit(runLauncher(spec))
	}
	code := m.Run()
	if tmpRoot != "" {
		os.RemoveAll(tmpRoot)
	}
	os.Exit(code)
}

// needGuest returns the test image, building it the first time; it skips
// the test when QEMU or a kernel is genuinely absent.
func needGuest(t *testing.T) *guestFiles {
	t.Helper()
	guestOnce.Do(func() { guest, guestSkip, guestErr = buildGuest() })
	if guestSkip {
		t.Skip(guestErr)
	}
	if guestErr != nil {
		t.Fatal(guestErr)
	}
	return guest
}

func buildGuest() (*guestFiles, bool, error) {
	for _, tool := range []string{engine.Binary, "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, true, fmt.Errorf("%s is not installed (Debian: qemu-system-x86, qemu-utils)", tool)
		}
	}
	// The kernel the daemon's default image is made of.
	vmlinuz, err := imagestore.HostKernel(imagestore.DefaultBootDir)
	if err != nil {
		return nil, true, err
	}
	release, err := kernel.Release(vmlinuz)
	if err != nil {
		return nil, false, err
	}
	modules := filepath.Join("/lib/modules", release)
	if _, err := os.Stat(filepath.Join(modules, "modules.dep")); err != nil {
		return nil, true, fmt.Errorf("no modules for kernel %s: %v", release, err)
	}

	dir, err := os.MkdirTemp("", "bgv")
	if err != nil {
		return nil, false, err
	}
	tmpRoot = dir
	g := &guestFiles{Dir: dir, Banger: filepath.Join(dir, "banger"), Vmlinux: filepath.Join(dir, "vmlinux"),
		Initrd: filepath.Join(dir, "initrd"), Base: filepath.Join(dir, "root.ext4")}

	build := exec.Command("go", "build", "-tags", "urfave_cli_no_docs", "-o", g.Banger, "banger")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, false, fmt.Errorf("build banger: %v\n%s", err, out)
	}
	start := time.Now()
	info, err := kernel.Extract(vmlinuz, g.Vmlinux)
	if err != nil {
		return nil, false, err
	}
	extracted := time.Since(start)

	start = time.Now()
	ix, err := kernel.ReadModuleIndex(modules)
	if err != nil {
		return nil, false, err
	}
	mods, err := ix.Resolve(kernel.GuestModules())
	if err != nil {
		return nil, false, err
	}
	if _, err := kernel.WriteInitramfs(g.Initrd, kernel.InitramfsSpec{Agent: g.Banger, Modules: mods, ModulesDir: modules, Release: release}); err != nil {
		return nil, false, err
	}
	initramfsTook := time.Since(start)

	// A root file system as an image import makes it: a directory with
	// the agent, packed without root or mounts.
	root := filepath.Join(dir, "rootdir")
	for _, d := range []string{"sbin", "etc", "proc", "sys", "dev", "run", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, false, err
		}
	}
	agent, err := os.ReadFile(g.Banger)
	if err != nil {
		return nil, false, err
	}
	if err := os.WriteFile(filepath.Join(root, boot.AgentPath), agent, 0o755); err != nil {
		return nil, false, err
	}
	os.WriteFile(filepath.Join(root, "etc", "hostname"), []byte("from-etc\n"), 0o644)
	if out, err := exec.Command("mkfs.ext4", "-q", "-d", root, "-L", "bangerroot", g.Base, "64M").CombinedOutput(); err != nil {
		return nil, false, fmt.Errorf("mkfs.ext4: %v: %s", err, out)
	}
	fmt.Fprintf(os.Stderr, "guest image: kernel %s (%s, PVH %v) extracted in %s; initramfs with %d modules in %s\n",
		release, info.Format, info.PVH, extracted.Round(time.Millisecond), len(mods), initramfsTook.Round(time.Millisecond))
	return g, false, nil
}

// vm is one booted test guest.
type vm struct {
	Dir    string
	Inst   *engine.Instance
	Engine *engine.QEMU
	Spec   engine.Spec
}

// newSpec makes a VM's instance directory and overlay disk, removed when
// the test ends, and returns its spec.
func newSpec(t *testing.T, g *guestFiles, hostname string) engine.Spec {
	t.Helper()
	dir, err := os.MkdirTemp("", "bgv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	disk := filepath.Join(dir, layout.Disk)
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", g.Base, "-F", "raw", disk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	return engine.Spec{
		Dir: dir, Kernel: g.Vmlinux, Initrd: g.Initrd, Disk: disk,
		MemoryMiB: 256,
		// BANGER_TEST_KERNEL_ARGS adds parameters when looking into a
		// boot: BANGER_LOG_LEVEL=debug makes the agent log its stages.
		KernelArgs: append([]string{boot.ParamHostname + "=" + hostname}, strings.Fields(os.Getenv("BANGER_TEST_KERNEL_ARGS"))...),
		Net:        &engine.UserNet{},
	}
}

// launch boots a guest with its own overlay and instance directory, and
// makes sure that the test leaves no QEMU and no directory behind.
func launch(t *testing.T, g *guestFiles, hostname string) *vm {
	t.Helper()
	spec := newSpec(t, g, hostname)
	dir := spec.Dir
	q := &engine.QEMU{StateDir: dir}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	inst, err := q.Launch(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if inst.Running() {
			if err := inst.Kill(context.Background()); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	t.Logf("qemu %d up (%s) in %s", inst.PID, inst.Accel, time.Since(start).Round(time.Millisecond))
	return &vm{Dir: dir, Inst: inst, Engine: q, Spec: spec}
}

// console returns the guest's console log so far.
func (v *vm) console(t *testing.T) string {
	data, err := os.ReadFile(v.Inst.ConsoleLog())
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// dumpConsoleOnFailure prints the console's end when the test fails.
func (v *vm) dumpConsoleOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		c := v.console(t)
		if i := len(c) - 6000; i > 0 {
			c = c[i:]
		}
		t.Logf("console log (end):\n%s", c)
		if q, err := os.ReadFile(filepath.Join(v.Dir, layout.EngineLog)); err == nil && len(strings.TrimSpace(string(q))) > 0 {
			t.Logf("qemu log:\n%s", q)
		}
	})
}
