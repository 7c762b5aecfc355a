package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"banger/internal/api"
	"banger/internal/dirs"
	"banger/packaging"
	"banger/rpc"
)

// testHost is a doctor's view of nothing: no tools, no daemon, no
// install, no bridge; each test gives it what it checks.
func testHost(t *testing.T) *doctorHost {
	t.Helper()
	dir := t.TempDir()
	return &doctorHost{
		client:    &rpc.Client{Socket: filepath.Join(dir, "run", "bangerd.sock")},
		build:     api.Build{Version: "test"},
		applets:   []string{"banger", "bangerd", "bangerd-root"},
		self:      filepath.Join(dir, "bin", "banger"),
		uid:       os.Getuid(),
		socket:    filepath.Join(dir, "run", "bangerd.sock"),
		sys:       packaging.System{Root: filepath.Join(dir, "root")},
		bootDir:   filepath.Join(dir, "boot"),
		busybox:   filepath.Join(dir, "busybox"),
		kvm:       filepath.Join(dir, "kvm"),
		ipForward: filepath.Join(dir, "ip_forward"),
		lookPath:  func(name string) (string, error) { return "", exec.ErrNotFound },
		bridge:    func(string) (*bridgeInfo, error) { return nil, nil },
		nat:       func() (*natInfo, error) { return nil, nil },
	}
}

// row runs the named check of the table on h.
func row(t *testing.T, h *doctorHost, name string) doctorRow {
	t.Helper()
	for _, c := range doctorChecks() {
		if c.name == name {
			r := c.run(context.Background(), h)
			r.Name = name
			return r
		}
	}
	t.Fatalf("no check %q", name)
	return doctorRow{}
}

func wantRow(t *testing.T, r doctorRow, status, detail string) {
	t.Helper()
	if r.Status != status || !strings.Contains(r.Detail, detail) {
		t.Errorf("%s: %s %q (fix %q); want %s with %q", r.Name, r.Status, r.Detail, r.Fix, status, detail)
	}
	if (r.Status == doctorWarn || r.Status == doctorFail) && r.Fix == "" && !strings.Contains(r.Detail, "read") {
		t.Errorf("%s: %s without a fix: %q", r.Name, r.Status, r.Detail)
	}
}

func writeFile(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func TestDoctorChecksHaveNamesOnce(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range doctorChecks() {
		if c.name == "" || c.run == nil || seen[c.name] {
			t.Errorf("check %q: empty, without a function, or twice", c.name)
		}
		seen[c.name] = true
	}
}

// Only a failed row makes the report not ok; warn and skip do not.
func TestRunDoctorAndItsTable(t *testing.T) {
	mk := func(status string) func(context.Context, *doctorHost) doctorRow {
		return func(context.Context, *doctorHost) doctorRow {
			return doctorRow{Status: status, Detail: status + " detail", Fix: "fix " + status}
		}
	}
	rep := runDoctor(context.Background(), testHost(t), []doctorCheck{{"a", mk(doctorOK)}, {"b", mk(doctorWarn)}, {"c", mk(doctorSkip)}})
	if !rep.OK || len(rep.Rows) != 3 || rep.Rows[1].Name != "b" {
		t.Errorf("ok, warn, skip: %+v", rep)
	}
	rep = runDoctor(context.Background(), testHost(t), []doctorCheck{{"a", mk(doctorOK)}, {"b", mk(doctorFail)}})
	if rep.OK {
		t.Errorf("a failed row: %+v", rep)
	}
	var b bytes.Buffer
	printDoctor(&b, rep)
	for _, want := range []string{"CHECK", "b  ", "fail", "fix: fix fail", "2 checks: 1 ok, 0 warn, 1 fail, 0 skip"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

func TestCheckTools(t *testing.T) {
	h := testHost(t)
	wantRow(t, row(t, h, "qemu-img"), doctorFail, "qemu-img is not installed")
	if r := row(t, h, "qemu-img"); r.Fix != "apt-get install qemu-utils" {
		t.Errorf("qemu-img fix: %q", r.Fix)
	}
	wantRow(t, row(t, h, "git"), doctorWarn, "git is not installed")

	bin := t.TempDir()
	writeFile(t, filepath.Join(bin, "qemu-system-x86_64"), "#!/bin/sh\necho 'QEMU emulator version 9.9.9'\necho second line\n", 0o755)
	writeFile(t, filepath.Join(bin, "mkfs.ext4"), "#!/bin/sh\nexit 1\n", 0o755)
	h.lookPath = func(name string) (string, error) {
		p := filepath.Join(bin, name)
		if _, err := os.Stat(p); err != nil {
			return "", exec.ErrNotFound
		}
		return p, nil
	}
	wantRow(t, row(t, h, "qemu-system-x86_64"), doctorOK, "qemu-system-x86_64: QEMU emulator version 9.9.9")
	wantRow(t, row(t, h, "mkfs.ext4"), doctorOK, filepath.Join(bin, "mkfs.ext4"))
}

func TestCheckAccel(t *testing.T) {
	h := testHost(t)
	wantRow(t, row(t, h, "accelerator"), doctorWarn, "TCG (software emulation)")
	writeFile(t, h.kvm, "", 0o666)
	wantRow(t, row(t, h, "accelerator"), doctorWarn, "want 12")
	if _, err := os.Stat("/dev/kvm"); err == nil {
		fake := h.kvm
		h.kvm = "/dev/kvm"
		if r := row(t, h, "accelerator"); r.Status != doctorOK && r.Status != doctorWarn {
			t.Errorf("/dev/kvm: %+v", r)
		}
		// The rows below are about the daemon's answer, on a host whose
		// KVM does not speak its API: this test's, not the machine's.
		h.kvm = fake
	}
	// An older daemon, without host.accel: the local check, and a note.
	h.d = &daemonView{ping: &api.PingResult{Version: "test"}, accelErr: rpc.Errorf(rpc.CodeUnknownMethod, "unknown method host.accel")}
	wantRow(t, row(t, h, "accelerator"), doctorWarn, "older and does not report its accelerator")
	// A daemon without QEMU cannot run VMs at all.
	h.d = &daemonView{ping: &api.PingResult{Version: "test"}, accelErr: rpc.Errorf(rpc.CodeUnavailable, "qemu-system-x86_64 not found")}
	wantRow(t, row(t, h, "accelerator"), doctorFail, "cannot run VMs: unavailable: qemu-system-x86_64 not found")
	// A daemon that cannot say (a timeout): the local check, and why.
	h.d = &daemonView{ping: &api.PingResult{Version: "test"}, accelErr: rpc.Errorf(rpc.CodeTimeout, "deadline")}
	wantRow(t, row(t, h, "accelerator"), doctorWarn, "did not say which it uses")
}

// The daemon's answer (host.accel) makes the row: kvm is ok, a fall
// back to TCG warns with the probe's reason and a fix, and only a choice
// VMs cannot start with fails.
func TestCheckAccelFromTheDaemon(t *testing.T) {
	probed := time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC)
	probe := func(usable bool, reason string) *api.KVMProbe {
		return &api.KVMProbe{Usable: usable, Reason: reason, TookMS: 312, ProbedAt: probed}
	}
	for _, tc := range []struct {
		name        string
		res         api.HostAccelResult
		status      string
		detail, fix string
	}{
		{"kvm", api.HostAccelResult{Configured: "auto", Accel: "kvm", Usable: true, Reason: "a test boot under KVM reached the root mount", Probe: probe(true, "a test boot under KVM reached the root mount")},
			doctorOK, "kvm: a test boot under KVM reached the root mount (probed ", ""},
		{"nested", api.HostAccelResult{Configured: "auto", Accel: "tcg", Usable: true, Reason: "KVM cannot run guests here: a test boot under KVM did not get far in 4s", Probe: probe(false, "a test boot under KVM did not get far in 4s (a nested or emulated KVM?)")},
			doctorWarn, "tcg, software emulation (seconds slower per boot), not KVM: KVM cannot run guests here: a test boot", "nested virtualisation on"},
		{"denied", api.HostAccelResult{Configured: "auto", Accel: "tcg", Usable: true, Reason: "KVM cannot run guests here: /dev/kvm: permission denied (add the user to the kvm group)", Probe: probe(false, "/dev/kvm: permission denied (add the user to the kvm group)")},
			doctorWarn, "permission denied", "sudo usermod -aG kvm $USER, then log in again and banger daemon stop && banger daemon start"},
		{"no kvm", api.HostAccelResult{Configured: "auto", Accel: "tcg", Usable: true, Reason: "KVM cannot run guests here: no /dev/kvm: KVM is not available on this host", Probe: probe(false, "no /dev/kvm: KVM is not available on this host")},
			doctorWarn, "no /dev/kvm", "bare metal"},
		{"tcg chosen", api.HostAccelResult{Configured: "tcg", Accel: "tcg", Usable: true, Reason: "chosen with --accel tcg"},
			doctorOK, "tcg (software emulation): chosen with --accel tcg", ""},
		{"tcg chosen where kvm works", api.HostAccelResult{Configured: "tcg", Accel: "tcg", Usable: true, Reason: "chosen with --accel tcg", Probe: probe(true, "ok")},
			doctorOK, "KVM would work here", ""},
		{"kvm forced, unusable", api.HostAccelResult{Configured: "kvm", Accel: "kvm", Usable: false, Reason: "chosen with --accel kvm, but KVM cannot run guests here: no /dev/kvm", Probe: probe(false, "no /dev/kvm: KVM is not available on this host")},
			doctorFail, "VMs get kvm and cannot start: chosen with --accel kvm", "--accel auto"},
		{"undecided", api.HostAccelResult{Configured: "auto", Usable: true, Reason: "/dev/kvm opens and speaks the KVM API; the first VM start test-boots under KVM and falls back to TCG if that fails"},
			doctorOK, "not decided yet: /dev/kvm opens", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := testHost(t)
			res := tc.res
			h.d = &daemonView{ping: &api.PingResult{Version: "test"}, accel: &res}
			r := row(t, h, "accelerator")
			wantRow(t, r, tc.status, tc.detail)
			if !strings.Contains(r.Fix, tc.fix) || (tc.fix == "") != (r.Fix == "") {
				t.Errorf("fix %q, want %q", r.Fix, tc.fix)
			}
		})
	}

	// Through the socket: the doctor asks host.accel of the daemon.
	h := testHost(t)
	fakeDaemon(t, h.socket, nil)
	wantRow(t, row(t, h, "accelerator"), doctorWarn, "tcg, software emulation (seconds slower per boot), not KVM: KVM cannot run guests here: fake")
}

func TestCheckKernelAndBusybox(t *testing.T) {
	h := testHost(t)
	h.d = &daemonView{pingErr: rpc.ErrUnreachable}
	wantRow(t, row(t, h, "kernel"), doctorFail, "no kernel in")
	writeFile(t, filepath.Join(h.bootDir, "vmlinuz-6.1.0-9-amd64"), "k", 0o644)
	writeFile(t, filepath.Join(h.bootDir, "vmlinuz-6.1.0-10-amd64"), "k", 0o644)
	wantRow(t, row(t, h, "kernel"), doctorOK, "vmlinuz-6.1.0-10-amd64 for the default image")

	wantRow(t, row(t, h, "busybox"), doctorFail, "no "+h.busybox)
	writeFile(t, h.busybox, "#!/bin/sh\n", 0o755)
	wantRow(t, row(t, h, "busybox"), doctorFail, "not an executable busybox")
	if sh, err := exec.LookPath("sh"); err == nil {
		if b, err := os.ReadFile(sh); err == nil {
			writeFile(t, h.busybox, string(b), 0o755)
			if r := row(t, h, "busybox"); r.Status == doctorFail {
				wantRow(t, r, doctorFail, "dynamically linked")
			}
		}
	}
	if self, err := os.Executable(); err == nil {
		if b, err := os.ReadFile(self); err == nil {
			writeFile(t, h.busybox, string(b), 0o755)
			if r := row(t, h, "busybox"); r.Status != doctorOK && !strings.Contains(r.Detail, "dynamically") {
				t.Errorf("an ELF file: %+v", r)
			}
		}
	}

	// Once the daemon has the default image, the host's parts are only
	// needed to build it again.
	h = testHost(t)
	h.d = &daemonView{ping: &api.PingResult{}, image: &api.Image{Name: "default"}}
	wantRow(t, row(t, h, "kernel"), doctorOK, "the default image is built")
	wantRow(t, row(t, h, "busybox"), doctorWarn, "needed only to build the default image again")
}

// fakeDaemon serves ping, version, host.check, host.accel and image.show on sock (and
// holds its stream socket), as a daemon of version "test".
func fakeDaemon(t *testing.T, sock string, hostErr error) {
	t.Helper()
	methods := rpc.Methods{
		api.MethodPing: rpc.Handle(func(context.Context, rpc.NoParams) (api.PingResult, error) {
			return api.PingResult{Version: "test", PID: os.Getpid(), UptimeMS: 1500}, nil
		}),
		api.MethodVersion: rpc.Handle(func(context.Context, rpc.NoParams) (api.VersionResult, error) {
			return api.VersionResult{Build: api.Build{Version: "test"}, Protocol: rpc.Version}, nil
		}),
		api.MethodHostCheck: rpc.Handle(func(context.Context, rpc.NoParams) (api.HostCheckResult, error) {
			return api.HostCheckResult{HelperMode: "socket", HelperPath: "/run/x.sock", Helper: api.PrivPingResult{Version: "test"}}, hostErr
		}),
		api.MethodHostAccel: rpc.Handle(func(context.Context, rpc.NoParams) (api.HostAccelResult, error) {
			return api.HostAccelResult{Configured: "auto", Accel: "tcg", Usable: true, Reason: "KVM cannot run guests here: fake"}, nil
		}),
		api.MethodImageShow: rpc.Handle(func(_ context.Context, p api.VMRef) (api.Image, error) {
			return api.Image{}, rpc.Errorf(rpc.CodeNotFound, "no image %s", p.Name)
		}),
	}
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	srv := &rpc.Server{Methods: methods, Authorize: rpc.AllowUIDs(uint32(os.Getuid())), Logger: zerolog.Nop()}
	ln, err := rpc.Listen(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := rpc.Listen(dirs.StreamSocket(sock), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		stream.Close()
	})
}

func TestDaemonRows(t *testing.T) {
	// Not running: a user daemon is started on demand (warn); the system
	// install's must run (fail). Nothing is started either way.
	h := testHost(t)
	wantRow(t, row(t, h, "daemon"), doctorWarn, "not running on "+h.socket)
	wantRow(t, row(t, h, "daemon sockets"), doctorSkip, "not running")
	wantRow(t, row(t, h, "helper"), doctorSkip, "not running")
	if _, err := os.Stat(h.socket); err == nil {
		t.Error("the doctor started a daemon")
	}
	h = testHost(t)
	h.system = true
	wantRow(t, row(t, h, "daemon"), doctorFail, "the system install's")
	if r := row(t, h, "daemon"); !strings.Contains(r.Fix, "systemctl start bangerd.service") {
		t.Errorf("system fix: %q", r.Fix)
	}

	h = testHost(t)
	fakeDaemon(t, h.socket, nil)
	wantRow(t, row(t, h, "daemon"), doctorOK, "bangerd test, pid")
	wantRow(t, row(t, h, "daemon sockets"), doctorOK, "bangerd.sock and bangerd-stream.sock 0600, directory 0700")
	wantRow(t, row(t, h, "helper"), doctorOK, "mode socket (/run/x.sock), bangerd-root test")
	wantRow(t, row(t, h, "kernel"), doctorFail, "no kernel") // not built, and no kernel

	h.d, h.build = nil, api.Build{Version: "newer"}
	wantRow(t, row(t, h, "daemon"), doctorWarn, "this client is newer")
	wantRow(t, row(t, h, "helper"), doctorWarn, "this client is newer")

	if err := os.Chmod(h.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(h.socket), 0o755); err != nil {
		t.Fatal(err)
	}
	r := row(t, h, "daemon sockets")
	wantRow(t, r, doctorFail, "bangerd.sock has mode 0666, want 0600")
	wantRow(t, r, doctorFail, "has mode 0755, want 0700")

	h = testHost(t)
	fakeDaemon(t, h.socket, rpc.Errorf(rpc.CodeUnavailable, "root helper unreachable"))
	wantRow(t, row(t, h, "helper"), doctorWarn, "root helper unreachable")
	h.d, h.system = nil, true
	wantRow(t, row(t, h, "helper"), doctorFail, "root helper unreachable")
}

func TestCheckLinks(t *testing.T) {
	h := testHost(t)
	writeFile(t, h.self, "binary", 0o755)
	wantRow(t, row(t, h, "applet links"), doctorWarn, "missing in "+filepath.Dir(h.self)+": bangerd, bangerd-root")
	if err := packaging.InstallLinks(filepath.Dir(h.self), h.self, h.applets); err != nil {
		t.Fatal(err)
	}
	wantRow(t, row(t, h, "applet links"), doctorOK, "3 applets linked")
	other := filepath.Join(t.TempDir(), "other")
	writeFile(t, other, "another binary", 0o755)
	link := filepath.Join(filepath.Dir(h.self), "bangerd")
	os.Remove(link)
	if err := os.Symlink(other, link); err != nil {
		t.Fatal(err)
	}
	wantRow(t, row(t, h, "applet links"), doctorFail, "bangerd (points at another file)")
}

// installUnder writes a system install for cfg under h's root, as
// `banger system install` would (without visudo or systemd).
func installUnder(t *testing.T, h *doctorHost, cfg packaging.Config) {
	t.Helper()
	writeFile(t, h.sys.Path(packaging.ConfigFile), fmt.Sprintf("owner = %q\nuid = %d\ngid = %d\nprefix = %q\nhelper = %q\n",
		cfg.Owner, cfg.UID, cfg.GID, cfg.Prefix, cfg.Helper), 0o644)
	bin := h.sys.Path(cfg.Binary())
	writeFile(t, bin, "binary", 0o755)
	if err := packaging.InstallLinks(filepath.Dir(bin), bin, h.applets); err != nil {
		t.Fatal(err)
	}
	files, err := packaging.Render(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for p, b := range files {
		mode := os.FileMode(0o644)
		if p == packaging.SudoersFile {
			mode = 0o440
		}
		writeFile(t, h.sys.Path(p), string(b), mode)
	}
	h.readConfig()
}

func TestSystemInstallRows(t *testing.T) {
	h := testHost(t)
	for _, name := range []string{"system install", "unit bangerd.service", "unit bangerd-root.service", "sudoers"} {
		wantRow(t, row(t, h, name), doctorSkip, "")
	}

	cfg := packaging.Config{Owner: "alice", UID: 4242, GID: 4242, Prefix: "/usr/local", Helper: packaging.HelperService}
	installUnder(t, h, cfg)
	wantRow(t, row(t, h, "system install"), doctorOK, "owner alice (uid 4242), prefix /usr/local, helper service")
	wantRow(t, row(t, h, "unit bangerd-root.service"), doctorOK, "NoNewPrivileges=yes, ProtectSystem=strict, ProtectHome=yes, PrivateTmp=yes")
	wantRow(t, row(t, h, "unit bangerd-root.service"), doctorOK, "CapabilityBoundingSet=CAP_NET_ADMIN CAP_CHOWN")
	wantRow(t, row(t, h, "unit bangerd.service"), doctorOK, "NoNewPrivileges=yes")
	wantRow(t, row(t, h, "sudoers"), doctorSkip, "no sudoers rule")
	// The helper service's socket must be there in service mode.
	wantRow(t, row(t, h, "helper socket"), doctorFail, "the helper service is not running")

	unit := h.sys.Path(path.Join(packaging.UnitDir, packaging.HelperUnit))
	b, _ := os.ReadFile(unit)
	writeFile(t, unit, strings.Replace(string(b), "NoNewPrivileges=yes\n", "", 1), 0o644)
	wantRow(t, row(t, h, "unit bangerd-root.service"), doctorFail, "lacks NoNewPrivileges=yes")
	writeFile(t, unit, string(b)+"# edited\n", 0o644)
	wantRow(t, row(t, h, "unit bangerd-root.service"), doctorWarn, "differs")
	os.Remove(unit)
	wantRow(t, row(t, h, "unit bangerd-root.service"), doctorFail, "no such file")
	if r := row(t, h, "unit bangerd-root.service"); r.Fix != "sudo banger system install --owner alice --prefix /usr/local --helper service" {
		t.Errorf("fix: %q", r.Fix)
	}

	os.Remove(filepath.Join(h.sys.Path(cfg.BinDir()), "bangerd-root"))
	wantRow(t, row(t, h, "system install"), doctorFail, "bangerd-root missing")

	// Sudo mode: no helper unit, a sudoers rule root's and 0440.
	h = testHost(t)
	cfg.Helper = packaging.HelperSudo
	installUnder(t, h, cfg)
	wantRow(t, row(t, h, "unit bangerd-root.service"), doctorSkip, "helper mode sudo")
	wantRow(t, row(t, h, "unit bangerd.service"), doctorOK, "ProtectHome=read-only, PrivateTmp=yes")
	wantRow(t, row(t, h, "helper socket"), doctorSkip, "user mode or sudo mode")
	sudoers := h.sys.Path(packaging.SudoersFile)
	if os.Getuid() == 0 {
		wantRow(t, row(t, h, "sudoers"), doctorOK, "0440, root's, as rendered for alice")
	} else {
		wantRow(t, row(t, h, "sudoers"), doctorFail, "want 0")
	}
	os.Chmod(sudoers, 0o644)
	wantRow(t, row(t, h, "sudoers"), doctorFail, "has mode 0644, want 0440")

	// A broken install.toml fails.
	writeFile(t, h.sys.Path(packaging.ConfigFile), "owner = [", 0o644)
	h.cfg = nil
	h.readConfig()
	wantRow(t, row(t, h, "system install"), doctorFail, "install.toml")
}

// The helper service's socket: the owner's, 0600, in root's 0711
// directory (root can give files away, so this part runs as root).
func TestHelperSocketRow(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("chown to the owner needs root")
	}
	h := testHost(t)
	installUnder(t, h, packaging.Config{Owner: "alice", UID: 4242, GID: 4242, Prefix: "/usr/local", Helper: packaging.HelperService})
	sock := h.sys.Path(packaging.HelperSocket)
	if err := os.MkdirAll(filepath.Dir(sock), 0o711); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Dir(sock), 0o711)
	ln, err := rpc.Listen(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	wantRow(t, row(t, h, "helper socket"), doctorFail, "is owned by uid 0, want 4242")
	if err := os.Chown(sock, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	wantRow(t, row(t, h, "helper socket"), doctorOK, "0600, uid 4242, the owner alice; directory root's, 0711")
}

func TestBridgeAndNATRows(t *testing.T) {
	h := testHost(t)
	wantRow(t, row(t, h, "bridge banger0"), doctorSkip, "no bridged VMs yet")
	for _, tc := range []struct {
		b      bridgeInfo
		status string
		detail string
	}{
		{bridgeInfo{Kind: "bridge", Up: true, Addrs: []string{"10.77.0.1/24"}}, doctorOK, "banger0 up, 10.77.0.1/24"},
		{bridgeInfo{Kind: "bridge"}, doctorWarn, "banger0 is down"},
		{bridgeInfo{Kind: "bridge", Up: true}, doctorWarn, "without an IPv4 address"},
		{bridgeInfo{Kind: "veth", Up: true}, doctorFail, "is a veth, not a bridge"},
	} {
		h.bridge = func(string) (*bridgeInfo, error) { return &tc.b, nil }
		wantRow(t, row(t, h, "bridge banger0"), tc.status, tc.detail)
	}

	h = testHost(t)
	h.uid = 1000
	wantRow(t, row(t, h, "nat"), doctorSkip, "needs root")
	h.uid = 0
	wantRow(t, row(t, h, "nat"), doctorSkip, "no bridged VMs yet")
	h.bridge = func(string) (*bridgeInfo, error) { return &bridgeInfo{Kind: "bridge", Up: true}, nil }
	wantRow(t, row(t, h, "nat"), doctorWarn, "bridged guests cannot reach out")
	h.nat = func() (*natInfo, error) { return &natInfo{Rules: []string{"banger banger0 10.77.0.0/24"}}, nil }
	writeFile(t, h.ipForward, "0\n", 0o644)
	wantRow(t, row(t, h, "nat"), doctorWarn, "IPv4 forwarding is off")
	writeFile(t, h.ipForward, "1\n", 0o644)
	wantRow(t, row(t, h, "nat"), doctorOK, "table ip banger: 1 masquerade rule(s) (banger banger0 10.77.0.0/24)")
	h.nat = func() (*natInfo, error) { return nil, errors.New("open nftables: denied") }
	wantRow(t, row(t, h, "nat"), doctorWarn, "denied")
}

// readBridge and readNAT on a real bridge and table, in a network
// namespace of the test's own.
func TestReadBridgeAndNATInANetns(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("a network namespace needs root")
	}
	var ns netns.NsHandle
	var nsErr error
	run := func(fn func()) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			runtime.LockOSThread() // never unlocked: the thread ends in ns
			if ns == 0 {
				ns, nsErr = netns.New()
				if nsErr != nil {
					return
				}
			} else if err := netns.Set(ns); err != nil {
				t.Errorf("enter network namespace: %v", err)
				return
			}
			fn()
		}()
		<-done
	}
	run(func() {})
	if nsErr != nil {
		t.Skipf("cannot make a network namespace: %v", nsErr)
	}
	defer ns.Close()
	run(func() {
		if b, err := readBridge(bridgeName); b != nil || err != nil {
			t.Errorf("no bridge yet: %+v, %v", b, err)
		}
		if n, err := readNAT(); n != nil || err != nil {
			t.Errorf("no table yet: %+v, %v", n, err)
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}}
		if err := netlink.LinkAdd(br); err != nil {
			t.Fatal(err)
		}
		addr, _ := netlink.ParseAddr("10.77.0.1/24")
		if err := netlink.AddrAdd(br, addr); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(br); err != nil {
			t.Fatal(err)
		}
		b, err := readBridge(bridgeName)
		if err != nil || b == nil || b.Kind != "bridge" || !b.Up || len(b.Addrs) != 1 || b.Addrs[0] != "10.77.0.1/24" {
			t.Errorf("bridge: %+v, %v", b, err)
		}

		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		tb := c.AddTable(&nftables.Table{Name: natTableName, Family: nftables.TableFamilyIPv4})
		ch := c.AddChain(&nftables.Chain{Name: natChainName, Table: tb, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
		c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{&expr.Masq{}},
			UserData: userdata.AppendString(nil, userdata.TypeComment, "banger banger0 10.77.0.0/24")})
		if err := c.Flush(); err != nil {
			t.Skipf("nftables: %v", err)
		}
		n, err := readNAT()
		if err != nil || n == nil || len(n.Rules) != 1 || n.Rules[0] != "banger banger0 10.77.0.0/24" {
			t.Errorf("nat: %+v, %v", n, err)
		}
	})
}

// The client uses the system daemon only for its owner (or root), and
// only when its socket is there.
func TestSystemSocket(t *testing.T) {
	sys := packaging.System{Root: t.TempDir()}
	if _, _, ok := systemSocket(sys, 4242); ok {
		t.Error("no install.toml: system socket used")
	}
	writeFile(t, sys.Path(packaging.ConfigFile), "owner = \"alice\"\nuid = 4242\ngid = 4242\nprefix = \"/usr/local\"\nhelper = \"service\"\n", 0o644)
	if _, _, ok := systemSocket(sys, 4242); ok {
		t.Error("no socket: system socket used")
	}
	sock := sys.Path(packaging.DaemonSocket)
	writeFile(t, sock, "", 0o600)
	if _, _, ok := systemSocket(sys, 4242); ok {
		t.Error("a regular file taken for the socket")
	}
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct {
		uid  int
		want bool
	}{{4242, true}, {0, true}, {1000, false}} {
		got, owner, ok := systemSocket(sys, tc.uid)
		if ok != tc.want || (ok && (got != sock || owner != 4242)) {
			t.Errorf("uid %d: %q %d %v, want %v", tc.uid, got, owner, ok, tc.want)
		}
	}
}

// A session given --socket or BANGER_SOCKET keeps it, and starts its
// daemon as before; the system daemon is never started by the client.
func TestSessionSocketChoice(t *testing.T) {
	// A developer's own settings must not change the session's.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "BANGER_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	t.Setenv("BANGER_SOCKET", "/tmp/x/bangerd.sock")
	var s *session
	app := &cli.App{Name: "banger", Flags: globalFlags(), Action: func(c *cli.Context) error {
		var err error
		s, err = newSession(c)
		return err
	}}
	if err := app.Run([]string{"banger"}); err != nil {
		t.Fatal(err)
	}
	if s == nil || s.socket != "/tmp/x/bangerd.sock" || s.system || !s.autostart {
		t.Errorf("BANGER_SOCKET: %+v", s)
	}
	sys := &session{socket: "/run/banger/bangerd.sock", system: true}
	err := sys.startDaemon(context.Background())
	if code, exit := classify(err); exit != ExitUnreachable || code != codeUnreachable || !strings.Contains(err.Error(), "systemctl start bangerd.service") {
		t.Errorf("starting the system daemon: %v (%s, %d)", err, code, exit)
	}
}

// End to end: the built binary's `doctor --json`, and its exit code rule:
// 1 exactly when a row fails; a warning does not fail.
func TestDoctorEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "banger")
	build := exec.Command("go", "build", "-tags", "urfave_cli_no_docs", "-o", bin, "banger")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BANGER_") && !strings.HasPrefix(kv, "XDG_") {
			env = append(env, kv)
		}
	}
	runDir := filepath.Join(dir, "run")
	os.Mkdir(runDir, 0o700)
	// BANGER_SOCKET: the host's system install, if any, stays out of it.
	env = append(env, "XDG_RUNTIME_DIR="+runDir, "XDG_STATE_HOME="+filepath.Join(dir, "state"),
		"BANGER_SOCKET="+filepath.Join(runDir, "banger", dirs.DaemonSocket))
	doctor := func(args ...string) (doctorReport, int, string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		var rep doctorReport
		if slices.Contains(args, "--json") {
			if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
				t.Fatalf("doctor --json: %v\n%s\nstderr: %s", err, stdout.String(), stderr.String())
			}
		}
		return rep, code, stdout.String()
	}
	status := func(rep doctorReport, name string) string {
		for _, r := range rep.Rows {
			if r.Name == name {
				return r.Status
			}
		}
		t.Fatalf("no row %q in %+v", name, rep.Rows)
		return ""
	}
	exitRule := func(rep doctorReport, code int) {
		t.Helper()
		failed := false
		for _, r := range rep.Rows {
			failed = failed || r.Status == doctorFail
		}
		if failed == rep.OK || (failed && code != ExitFailed) || (!failed && code != ExitOK) {
			t.Errorf("exit %d, ok %v, a row failed: %v\n%+v", code, rep.OK, failed, rep.Rows)
		}
	}

	rep, code, _ := doctor("doctor", "--json")
	exitRule(rep, code)
	if len(rep.Rows) != len(doctorChecks()) {
		t.Errorf("%d rows, want %d", len(rep.Rows), len(doctorChecks()))
	}
	// The daemon is not running: a warning, and the doctor starts none.
	if s := status(rep, "daemon"); s != doctorWarn {
		t.Errorf("daemon: %s", s)
	}
	if s := status(rep, "applet links"); s != doctorWarn {
		t.Errorf("applet links, none made: %s", s)
	}
	if _, err := os.Stat(filepath.Join(runDir, "banger", "bangerd.sock")); err == nil {
		t.Error("doctor started the daemon")
	}

	// A foreign file where a link should be fails the row and the run.
	writeFile(t, filepath.Join(dir, "bangerd"), "not banger", 0o755)
	rep, code, _ = doctor("doctor", "--json")
	exitRule(rep, code)
	if s := status(rep, "applet links"); s != doctorFail || code != ExitFailed || rep.OK {
		t.Errorf("a foreign link: row %s, exit %d, ok %v", s, code, rep.OK)
	}
	_, code, out := doctor("doctor")
	if code != ExitFailed || !strings.Contains(out, "fix: remove them, then banger links install "+dir) {
		t.Errorf("human output, exit %d:\n%s", code, out)
	}
}
