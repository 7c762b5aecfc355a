package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"banger/applets/agent/boot"
	"banger/applets/daemon/imagestore"
	"banger/internal/layout"
	"banger/rpc"
)

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bgv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func testSpec(dir string) Spec {
	return Spec{
		Dir: dir, Name: "box", Kernel: "/k/vmlinux", Initrd: "/k/initrd", Disk: dir + "/disk.qcow2",
		DiskFormat: "qcow2", CPUs: 2, MemoryMiB: 512,
		KernelArgs: []string{"banger.hostname=box"},
		Net:        &UserNet{},
	}
}

func argAfter(argv []string, flag string) []string {
	var out []string
	for i, a := range argv {
		if a == flag && i+1 < len(argv) {
			out = append(out, argv[i+1])
		}
	}
	return out
}

func TestArgvTCG(t *testing.T) {
	argv := buildArgv("/usr/bin/qemu-system-x86_64", testSpec("/i/box"), AccelTCG, 2096018)
	want := map[string][]string{
		"-machine": {"microvm,acpi=on"},
		"-accel":   {"tcg"},
		"-cpu":     {"max"},
		"-smp":     {"2"},
		"-m":       {"512"},
		"-kernel":  {"/k/vmlinux"},
		"-initrd":  {"/k/initrd"},
		"-serial":  {"chardev:console"},
		"-netdev":  {"stream,id=net0,server=on,addr.type=fd,addr.str=5"},
	}
	for flag, w := range want {
		if got := argAfter(argv, flag); !slices.Equal(got, w) {
			t.Errorf("%s = %q, want %q", flag, got, w)
		}
	}
	for _, must := range []string{"-nodefaults", "-no-user-config", "-nographic", "-no-reboot"} {
		if !slices.Contains(argv, must) {
			t.Errorf("argv lacks %s", must)
		}
	}
	devs := strings.Join(argAfter(argv, "-device"), " ")
	for _, d := range []string{"virtio-blk-device,drive=root", "virtio-serial-device", "virtserialport,chardev=agent,name=org.banger.agent", "virtio-net-device,netdev=net0", "virtio-rng-device"} {
		if !strings.Contains(devs, d) {
			t.Errorf("devices %q lack %s", devs, d)
		}
	}
	chardevs := strings.Join(argAfter(argv, "-chardev"), " ")
	for _, c := range []string{"file,id=console,path=/i/box/console.log", "socket,id=qmp,fd=3,server=on,wait=off", "socket,id=agent,fd=4,server=on,wait=off"} {
		if !strings.Contains(chardevs, c) {
			t.Errorf("chardevs %q lack %s", chardevs, c)
		}
	}
	cmdline := strings.Fields(argAfter(argv, "-append")[0])
	for _, a := range []string{"console=ttyS0", "panic=-1", "root=/dev/vda", "rw", "init=/sbin/banger-agent", "rdinit=/sbin/banger-agent",
		"tsc_early_khz=2096018", "banger.ip=10.0.2.15/24", "banger.gw=10.0.2.2", "banger.dns=10.0.2.3"} {
		if !slices.Contains(cmdline, a) {
			t.Errorf("kernel command line %q lacks %s", cmdline, a)
		}
	}
	// The caller's parameters come last, so they win.
	if cmdline[len(cmdline)-1] != "banger.hostname=box" {
		t.Errorf("kernel command line %q does not end with the caller's parameters", cmdline)
	}
	if accelOf(argv) != AccelTCG {
		t.Errorf("accelOf = %q", accelOf(argv))
	}
}

// A VM awaiting its state waits for it (-incoming defer) with its memory
// allocated; it cannot also load one as it starts.
func TestArgvAwaitState(t *testing.T) {
	s := testSpec("/i/box")
	s.AwaitState = true
	argv := buildArgv("/usr/bin/qemu-system-x86_64", s, AccelTCG, 2096018)
	if got := argAfter(argv, "-incoming"); !slices.Equal(got, []string{"defer"}) || !slices.Contains(argv, "-mem-prealloc") {
		t.Errorf("argv %q: want -incoming defer and -mem-prealloc", argv)
	}
	s.Incoming = "/i/box/warm.memory"
	if err := s.validate(); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("validate with Incoming and AwaitState = %v", err)
	}
}

func TestArgvKVMNoInitrdNoNet(t *testing.T) {
	s := testSpec("/i/box")
	s.Initrd, s.Net = "", nil
	argv := buildArgv("/usr/bin/qemu-system-x86_64", s, AccelKVM, 0)
	if got := argAfter(argv, "-cpu"); !slices.Equal(got, []string{"host"}) {
		t.Errorf("-cpu %q under KVM", got)
	}
	cmdline := argAfter(argv, "-append")[0]
	for _, no := range []string{"tsc_early_khz", "rdinit=", "banger.ip"} {
		if strings.Contains(cmdline, no) {
			t.Errorf("kernel command line %q has %s", cmdline, no)
		}
	}
	if slices.Contains(argv, "-initrd") || slices.Contains(argv, "-netdev") {
		t.Errorf("argv %q has an initrd or a network", argv)
	}
}

func TestArgvTap(t *testing.T) {
	s := testSpec("/i/box")
	s.Net = nil
	s.Tap = &TapNet{Name: "bgtap-0abc123de", MAC: "02:11:22:33:44:55", Guest: boot.Network{
		Address: netip.MustParsePrefix("10.77.0.2/24"), Gateway: netip.MustParseAddr("10.77.0.1")}}
	argv := buildArgv("/usr/bin/qemu-system-x86_64", s, AccelTCG, 2096018)
	if got := argAfter(argv, "-netdev"); !slices.Equal(got, []string{"tap,id=net0,ifname=bgtap-0abc123de,script=no,downscript=no"}) {
		t.Errorf("-netdev %q", got)
	}
	if devs := argAfter(argv, "-device"); !slices.Contains(devs, "virtio-net-device,netdev=net0,mac=02:11:22:33:44:55") {
		t.Errorf("devices %q lack the tap's", devs)
	}
	cmdline := strings.Fields(argAfter(argv, "-append")[0])
	for _, a := range []string{"banger.ip=10.77.0.2/24", "banger.gw=10.77.0.1"} {
		if !slices.Contains(cmdline, a) {
			t.Errorf("kernel command line %q lacks %s", cmdline, a)
		}
	}
	for _, a := range cmdline {
		if strings.HasPrefix(a, "banger.dns=") || a == "banger.ip=10.0.2.15/24" {
			t.Errorf("kernel command line %q has %s", cmdline, a)
		}
	}
}

func TestHostTSC(t *testing.T) {
	khz, err := hostTSCkHz()
	if err != nil {
		t.Fatal(err)
	}
	if khz < 100_000 || khz > 10_000_000 {
		t.Errorf("host TSC %d kHz is implausible", khz)
	}
}

func TestSpecValidation(t *testing.T) {
	dir := shortDir(t)
	kernel := filepath.Join(dir, "vmlinux")
	disk := filepath.Join(dir, "disk.qcow2")
	os.WriteFile(kernel, []byte("k"), 0o644)
	os.WriteFile(disk, []byte("d"), 0o644)
	good := Spec{Dir: dir, Kernel: kernel, Disk: disk}
	if err := good.withDefaults().validate(); err != nil {
		t.Fatalf("good spec: %v", err)
	}
	withTap := good
	withTap.Tap = goodTap()
	if err := withTap.withDefaults().validate(); err != nil {
		t.Fatalf("good spec with a tap: %v", err)
	}
	for name, change := range map[string]func(*Spec){
		"relative dir":      func(s *Spec) { s.Dir = "vm" },
		"missing dir":       func(s *Spec) { s.Dir = dir + "/nope" },
		"missing kernel":    func(s *Spec) { s.Kernel = dir + "/nope" },
		"missing disk":      func(s *Spec) { s.Disk = "" },
		"missing initrd":    func(s *Spec) { s.Initrd = dir + "/nope" },
		"comma in a path":   func(s *Spec) { os.WriteFile(dir+"/a,b", nil, 0o644); s.Kernel = dir + "/a,b" },
		"too little memory": func(s *Spec) { s.MemoryMiB = 32 },
		"too many cpus":     func(s *Spec) { s.CPUs = 65 },
		"bad accel":         func(s *Spec) { s.Accel = "hvf" },
		"bad disk format":   func(s *Spec) { s.DiskFormat = "vmdk" },
		"space in an arg":   func(s *Spec) { s.KernelArgs = []string{"a b"} },
		"tap and user net":  func(s *Spec) { s.Net, s.Tap = &UserNet{}, goodTap() },
		"host's tap":        func(s *Spec) { s.Tap = goodTap(); s.Tap.Name = "eth0" },
		"long tap name":     func(s *Spec) { s.Tap = goodTap(); s.Tap.Name = "bgtap-0123456789" },
		"option in tap":     func(s *Spec) { s.Tap = goodTap(); s.Tap.Name = "bgtap-a,script=/x" },
		"global mac":        func(s *Spec) { s.Tap = goodTap(); s.Tap.MAC = "00:11:22:33:44:55" },
		"multicast mac":     func(s *Spec) { s.Tap = goodTap(); s.Tap.MAC = "03:11:22:33:44:55" },
		"option in mac":     func(s *Spec) { s.Tap = goodTap(); s.Tap.MAC = "02:11:22:33:44:55,x=y" },
		"no guest address":  func(s *Spec) { s.Tap = goodTap(); s.Tap.Guest = boot.Network{} },
		"long dir": func(s *Spec) {
			long := filepath.Join(dir, strings.Repeat("x", 100))
			os.Mkdir(long, 0o755)
			s.Dir = long
		},
	} {
		s := good
		change(&s)
		err := s.withDefaults().validate()
		if rpc.CodeOf(err) != rpc.CodeInvalidParams {
			t.Errorf("%s: %v, want invalid_params", name, err)
		}
	}
}

func goodTap() *TapNet {
	return &TapNet{Name: "bgtap-a1", MAC: "02:00:00:00:00:01", Guest: boot.Network{Address: netip.MustParsePrefix("10.77.0.2/24")}}
}

func TestParseAccel(t *testing.T) {
	for in, want := range map[string]Accel{"": AccelAuto, "auto": AccelAuto, "KVM": AccelKVM, " tcg ": AccelTCG} {
		if got, err := ParseAccel(in); err != nil || got != want {
			t.Errorf("ParseAccel(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseAccel("xen"); rpc.CodeOf(err) != rpc.CodeInvalidParams {
		t.Errorf("ParseAccel(xen) = %v", err)
	}
}

func TestMissingQEMUIsUnavailable(t *testing.T) {
	dir := shortDir(t)
	os.WriteFile(dir+"/k", nil, 0o644)
	os.WriteFile(dir+"/d", nil, 0o644)
	q := &QEMU{Binary: "/nonexistent/qemu-system-x86_64"}
	_, err := q.Launch(context.Background(), Spec{Dir: dir, Kernel: dir + "/k", Disk: dir + "/d", Accel: AccelTCG})
	if rpc.CodeOf(err) != rpc.CodeUnavailable || !strings.Contains(err.Error(), "qemu-system-x86") {
		t.Errorf("Launch without qemu = %v, want unavailable naming the package", err)
	}
	if _, err := q.KVM(context.Background(), ""); rpc.CodeOf(err) != rpc.CodeUnavailable {
		t.Errorf("KVM without qemu = %v", err)
	}
}

func TestAttachNotRunning(t *testing.T) {
	dir := shortDir(t)
	if _, err := Attach(context.Background(), dir); !errors.Is(err, ErrNotRunning) {
		t.Errorf("no pidfile: %v", err)
	}
	argv, _ := json.Marshal([]string{"/usr/bin/qemu-system-x86_64", "-name", "x"})
	os.WriteFile(filepath.Join(dir, layout.Argv), argv, 0o644)

	// A live process that is not this VM's QEMU: the test itself.
	os.WriteFile(filepath.Join(dir, layout.PID), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	if _, err := Attach(context.Background(), dir); !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "not this VM's qemu") {
		t.Errorf("someone else's pid: %v", err)
	}
	// A pid that is gone.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, layout.PID), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
	if _, err := Attach(context.Background(), dir); !errors.Is(err, ErrNotRunning) {
		t.Errorf("dead pid: %v", err)
	}
	os.WriteFile(filepath.Join(dir, layout.PID), []byte("garbage"), 0o644)
	if _, err := Attach(context.Background(), dir); !errors.Is(err, ErrNotRunning) {
		t.Errorf("garbage pidfile: %v", err)
	}
	os.WriteFile(filepath.Join(dir, layout.PID), []byte(strconv.Itoa(os.Getpid())), 0o644)
	os.Remove(filepath.Join(dir, layout.Argv))
	if _, err := Attach(context.Background(), dir); !errors.Is(err, ErrNotRunning) {
		t.Errorf("no argv: %v", err)
	}
}

func TestWatchExit(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done, stop, err := watchExit(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	select {
	case <-done:
		t.Fatal("exit seen while the process runs")
	case <-time.After(50 * time.Millisecond):
	}
	cmd.Process.Kill()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("exit not seen")
	}
	cmd.Wait()

	// stop ends a watch on a process that stays.
	cmd = exec.Command("sleep", "30")
	cmd.Start()
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	done, stop, err = watchExit(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("stop did not end the watch")
	}
}

func TestZombieStat(t *testing.T) {
	for stat, want := range map[string]bool{
		"123 (qemu-system-x86) S 1 123": false,
		"123 (a) b) Z 1 123":            true,
		"123 (x) X 1":                   true,
		"garbage":                       false,
	} {
		if got := zombie([]byte(stat)); got != want {
			t.Errorf("zombie(%q) = %v", stat, got)
		}
	}
}

// needQEMU skips a test when QEMU is genuinely absent.
func needQEMU(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath(Binary)
	if err != nil {
		t.Skipf("%s is not installed (Debian: qemu-system-x86)", Binary)
	}
	return p
}

// hostKernel is the host kernel the daemon's default image is made of
// (the newest by version), or "".
func hostKernel() string {
	k, _ := imagestore.HostKernel(imagestore.DefaultBootDir)
	return k
}

// bootSpec is a TCG spec that boots the host's kernel on an empty raw
// disk in a fresh instance directory: the guest never finds a root, but
// QEMU runs. It skips the test where QEMU or a kernel is missing.
func bootSpec(t *testing.T) Spec {
	t.Helper()
	needQEMU(t)
	kernel := hostKernel()
	if kernel == "" {
		t.Skip("no kernel in /boot (Debian: linux-image-amd64)")
	}
	dir := shortDir(t)
	disk := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return Spec{Dir: dir, Kernel: kernel, Disk: disk, DiskFormat: "raw", Accel: AccelTCG}
}

// TestLaunchFailureIsReported: QEMU that cannot start its guest (here, a
// kernel that is not one) exits at once; Launch says why, with QEMU's own
// words, and leaves no process and no sockets.
func TestLaunchFailureIsReported(t *testing.T) {
	needQEMU(t)
	dir := shortDir(t)
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("not a kernel at all"), 0o644)
	disk := filepath.Join(dir, "disk.raw")
	os.WriteFile(disk, make([]byte, 1<<20), 0o644)
	q := &QEMU{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	inst, err := q.Launch(ctx, Spec{Dir: dir, Kernel: kernel, Disk: disk, DiskFormat: "raw", Accel: AccelTCG})
	if err == nil {
		inst.Kill(context.Background())
		t.Fatal("Launch with a bogus kernel succeeded")
	}
	t.Logf("Launch failed in %s: %v", time.Since(start).Round(time.Millisecond), err)
	if !strings.Contains(err.Error(), "qemu exited at start") || !strings.Contains(strings.ToLower(err.Error()), "kernel") {
		t.Errorf("error does not give QEMU's reason: %v", err)
	}
	for _, f := range runtimeFiles() {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind", f)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, layout.Argv)); err != nil {
		t.Errorf("argv not recorded: %v", err)
	}
}

// TestLaunchCanceled: a Launch whose context ends while QEMU starts kills
// it.
func TestLaunchCanceled(t *testing.T) {
	spec := bootSpec(t)
	dir := spec.Dir
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := (&QEMU{}).Launch(ctx, spec)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Launch with a canceled context = %v", err)
	}
	pid, _ := os.ReadFile(filepath.Join(dir, layout.PID))
	if len(pid) != 0 {
		t.Errorf("pidfile left: %s", pid)
	}
}

// TestKVMProbe: the probe answers within its bound and caches its answer.
// On this project's machines KVM cannot run Linux guests (no /dev/kvm, or
// a nested host that crawls), and the answer must be "not usable".
func TestKVMProbe(t *testing.T) {
	needQEMU(t)
	kernel := hostKernel()
	state := shortDir(t)
	q := &QEMU{StateDir: state}
	start := time.Now()
	st, err := q.KVM(context.Background(), kernel)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("KVM usable: %v (%s) in %s", st.Usable, st.Reason, took.Round(time.Millisecond))
	if took > DefaultProbeTimeout+2*time.Second {
		t.Errorf("probe took %s, bound %s", took, DefaultProbeTimeout)
	}
	if _, err := os.Stat("/dev/kvm"); errors.Is(err, os.ErrNotExist) && st.Usable {
		t.Error("KVM usable without /dev/kvm")
	}
	if os.Getenv("BANGER_KVM_WORKS") == "" && st.Usable {
		t.Error("KVM reported usable; on this project's machines it is not (set BANGER_KVM_WORKS=1 on a host where it is)")
	}
	if kernel == "" {
		return // nothing final to cache without a kernel to test with
	}
	data, err := os.ReadFile(filepath.Join(state, layout.KVMProbe))
	if err != nil {
		t.Fatalf("answer not cached: %v", err)
	}
	var cached KVMStatus
	if err := json.Unmarshal(data, &cached); err != nil || cached.Usable != st.Usable || cached.Key == "" {
		t.Errorf("cached %s, %v", data, err)
	}
	// A new engine (a restarted daemon) takes the cached answer.
	start = time.Now()
	st2, _ := (&QEMU{StateDir: state}).KVM(context.Background(), kernel)
	if st2.ProbedAt != st.ProbedAt || time.Since(start) > time.Second {
		t.Errorf("second engine probed again: %+v", st2)
	}
	// auto resolves to TCG here.
	bin, _ := q.binary()
	if a := q.resolveAccel(context.Background(), bin, Spec{Accel: AccelAuto, Kernel: kernel}); a != AccelTCG && !st.Usable {
		t.Errorf("auto resolved to %s", a)
	}
}

// TestProbeBootMechanics runs the KVM probe's test boot under TCG, where
// it works here: the marker is found when the kernel gets there, and the
// time bound holds when it cannot.
func TestProbeBootMechanics(t *testing.T) {
	bin := needQEMU(t)
	kernel := hostKernel()
	if kernel == "" {
		t.Skip("no kernel in /boot (Debian: linux-image-amd64)")
	}
	khz, err := hostTSCkHz()
	if err != nil {
		t.Fatal(err)
	}
	tcg := []string{"-accel", "tcg", "-cpu", "max"}
	start := time.Now()
	reached, stderr, err := testBoot(context.Background(), bin, kernel, tcg, "tsc_early_khz="+strconv.Itoa(khz), 60*time.Second)
	if !reached || err != nil {
		t.Fatalf("test boot under TCG: reached %v, err %v, stderr %q", reached, err, stderr)
	}
	t.Logf("test boot under TCG reached the root mount in %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	reached, _, err = testBoot(context.Background(), bin, kernel, tcg, "tsc_early_khz="+strconv.Itoa(khz), 300*time.Millisecond)
	if reached || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Errorf("a 300 ms bound: reached %v, err %v, after %s", reached, err, time.Since(start))
	}
}

// QEMU sends events on every QMP connection: here a user network's
// connections to its netdev (NETDEV_STREAM_CONNECTED, _DISCONNECTED), one
// after another, while the test asks for the status as a save or a load
// polls it. Every answer is the status; none is corrupted by an event
// read right after it (go-qemu's qmp handed out its scanner's buffer,
// which the next line overwrote: third_party/go-qemu).
func TestQMPAnswersBesideEvents(t *testing.T) {
	spec := bootSpec(t)
	spec.Net = &UserNet{}
	spec.AwaitState = true // QEMU waits, its guest never runs
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	inst, err := (&QEMU{}).Launch(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Kill(context.Background()) })
	stop := make(chan struct{})
	done := make(chan int)
	const dialers = 4
	for range dialers {
		go func() {
			n := 0
			defer func() { done <- n }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				// A full backlog refuses a dial (EAGAIN): try again.
				if c, err := net.Dial("unix", inst.NetSocket()); err == nil {
					c.Close()
					n++
				}
			}
		}()
	}
	err = inst.qmpConn(ctx, "poll", func(run qmpRunner) error {
		for i, until := 0, time.Now().Add(5*time.Second); i < 2000 && time.Now().Before(until); i++ {
			raw, err := run(qmp.Command{Execute: "query-status"})
			if err != nil {
				return err
			}
			var st Status
			if err := json.Unmarshal(raw, &st); err != nil || st.Status != "inmigrate" {
				return fmt.Errorf("answer %d: %s (%v), want the status inmigrate", i, raw, err)
			}
		}
		return nil
	})
	close(stop)
	n := 0
	for range dialers {
		n += <-done
	}
	t.Logf("%d netdev connections meanwhile", n)
	if err != nil {
		t.Error(err)
	}
}
