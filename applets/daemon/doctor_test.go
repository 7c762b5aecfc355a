package daemon

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/doctor/doctortest"
	"banger/rpc"
)

// testDoctorHost is the daemon's checks' view of nothing: no tools, no
// kernel, no busybox, no KVM, no daemon; each test gives it what it
// checks.
func testDoctorHost(t *testing.T) *doctorHost {
	t.Helper()
	dir := t.TempDir()
	return &doctorHost{
		uid:      os.Getuid(),
		bootDir:  filepath.Join(dir, "boot"),
		busybox:  filepath.Join(dir, "busybox"),
		kvm:      filepath.Join(dir, "kvm"),
		lookPath: func(name string) (string, error) { return "", exec.ErrNotFound },
	}
}

// doctorRow runs the named check of the daemon's table on h.
func doctorRow(t *testing.T, h *doctorHost, name string) api.DoctorRow {
	return doctortest.Row(t, h, daemonChecks(), name)
}

func TestDaemonChecksHaveNamesOnce(t *testing.T) { doctortest.UniqueNames(t, daemonChecks()) }

func TestCheckTools(t *testing.T) {
	h := testDoctorHost(t)
	doctortest.Want(t, doctorRow(t, h, "qemu-img"), api.DoctorFail, "qemu-img is not installed")
	if r := doctorRow(t, h, "qemu-img"); r.Fix != "apt-get install qemu-utils" {
		t.Errorf("qemu-img fix: %q", r.Fix)
	}
	doctortest.Want(t, doctorRow(t, h, "git"), api.DoctorWarn, "git is not installed")
	// The default image needs mmdebstrap; tiny and imports do not.
	doctortest.Want(t, doctorRow(t, h, "mmdebstrap"), api.DoctorWarn, "--image tiny")
	if r := doctorRow(t, h, "mmdebstrap"); r.Fix != "apt-get install mmdebstrap uidmap" {
		t.Errorf("mmdebstrap fix: %q", r.Fix)
	}

	bin := t.TempDir()
	doctortest.WriteFile(t, filepath.Join(bin, "qemu-system-x86_64"), "#!/bin/sh\necho 'QEMU emulator version 9.9.9'\necho second line\n", 0o755)
	doctortest.WriteFile(t, filepath.Join(bin, "mkfs.ext4"), "#!/bin/sh\nexit 1\n", 0o755)
	h.lookPath = func(name string) (string, error) {
		p := filepath.Join(bin, name)
		if _, err := os.Stat(p); err != nil {
			return "", exec.ErrNotFound
		}
		return p, nil
	}
	doctortest.Want(t, doctorRow(t, h, "qemu-system-x86_64"), api.DoctorOK, "qemu-system-x86_64: QEMU emulator version 9.9.9")
	doctortest.Want(t, doctorRow(t, h, "mkfs.ext4"), api.DoctorOK, filepath.Join(bin, "mkfs.ext4"))
}

func TestCheckAccel(t *testing.T) {
	h := testDoctorHost(t)
	doctortest.Want(t, doctorRow(t, h, "accelerator"), api.DoctorWarn, "TCG (software emulation)")
	doctortest.WriteFile(t, h.kvm, "", 0o666)
	doctortest.Want(t, doctorRow(t, h, "accelerator"), api.DoctorWarn, "want 12")
	if r := doctorRow(t, h, "accelerator"); r.Code != api.KVMBadDevice {
		t.Errorf("a file that is not the KVM device: code %q", r.Code)
	}
	if _, err := os.Stat("/dev/kvm"); err == nil {
		fake := h.kvm
		h.kvm = "/dev/kvm"
		if r := doctorRow(t, h, "accelerator"); r.Status != api.DoctorOK && r.Status != api.DoctorWarn {
			t.Errorf("/dev/kvm: %+v", r)
		}
		// The rows below are about the daemon's answer, on a host whose
		// KVM does not speak its API: this test's, not the machine's.
		h.kvm = fake
	}
	// An older daemon, without host.accel: the local check, and a note.
	h.view = daemonView{running: true, accelErr: rpc.Errorf(rpc.CodeUnknownMethod, "unknown method host.accel")}
	doctortest.Want(t, doctorRow(t, h, "accelerator"), api.DoctorWarn, "older and does not report its accelerator")
	// A daemon without QEMU cannot run VMs at all.
	h.view = daemonView{running: true, accelErr: rpc.Errorf(rpc.CodeUnavailable, "qemu-system-x86_64 not found")}
	doctortest.Want(t, doctorRow(t, h, "accelerator"), api.DoctorFail, "cannot run VMs: unavailable: qemu-system-x86_64 not found")
	// A daemon that cannot say (a timeout): the local check, and why.
	h.view = daemonView{running: true, accelErr: rpc.Errorf(rpc.CodeTimeout, "deadline")}
	doctortest.Want(t, doctorRow(t, h, "accelerator"), api.DoctorWarn, "did not say which it uses")
	// Checked as root for a system install: says whose access counts.
	if h.uid == 0 {
		h.owner = "alice"
		doctortest.Want(t, doctorRow(t, h, "accelerator"), api.DoctorWarn, "checked as root, the daemon runs as alice")
	}
}

// The daemon's answer (host.accel) makes the row: kvm is ok, a fall
// back to TCG warns with the probe's reason and a fix, and only a choice
// VMs cannot start with fails.
func TestCheckAccelFromTheDaemon(t *testing.T) {
	probed := time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC)
	probe := func(usable bool, code, reason string) *api.KVMProbe {
		return &api.KVMProbe{Usable: usable, Code: code, Reason: reason, TookMS: 312, ProbedAt: probed}
	}
	for _, tc := range []struct {
		name        string
		res         api.HostAccelResult
		status      string
		detail, fix string
	}{
		{"kvm", api.HostAccelResult{Configured: "auto", Accel: "kvm", Usable: true, Reason: "a test boot under KVM reached the root mount", Probe: probe(true, "", "a test boot under KVM reached the root mount")},
			api.DoctorOK, "kvm: a test boot under KVM reached the root mount (probed ", ""},
		{"nested", api.HostAccelResult{Configured: "auto", Accel: "tcg", Usable: true, Reason: "KVM cannot run guests here: a test boot under KVM did not get far in 4s", Probe: probe(false, api.KVMCannotRun, "a test boot under KVM did not get far in 4s (a nested or emulated KVM?)")},
			api.DoctorWarn, "tcg, software emulation (seconds slower per boot), not KVM: KVM cannot run guests here: a test boot", "nested virtualisation on"},
		{"denied", api.HostAccelResult{Configured: "auto", Accel: "tcg", Usable: true, Reason: "KVM cannot run guests here: /dev/kvm: permission denied (add the user to the kvm group)", Probe: probe(false, api.KVMDenied, "/dev/kvm: permission denied (add the user to the kvm group)")},
			api.DoctorWarn, "permission denied", "sudo usermod -aG kvm $USER, then log in again and banger daemon stop && banger daemon start"},
		{"no kvm", api.HostAccelResult{Configured: "auto", Accel: "tcg", Usable: true, Reason: "KVM cannot run guests here: no /dev/kvm: KVM is not available on this host", Probe: probe(false, api.KVMMissing, "no /dev/kvm: KVM is not available on this host")},
			api.DoctorWarn, "no /dev/kvm", "bare metal"},
		{"tcg chosen", api.HostAccelResult{Configured: "tcg", Accel: "tcg", Usable: true, Reason: "chosen with --accel tcg"},
			api.DoctorOK, "tcg (software emulation): chosen with --accel tcg", ""},
		{"tcg chosen where kvm works", api.HostAccelResult{Configured: "tcg", Accel: "tcg", Usable: true, Reason: "chosen with --accel tcg", Probe: probe(true, "", "ok")},
			api.DoctorOK, "KVM would work here", ""},
		{"kvm forced, unusable", api.HostAccelResult{Configured: "kvm", Accel: "kvm", Usable: false, Reason: "chosen with --accel kvm, but KVM cannot run guests here: no /dev/kvm", Probe: probe(false, api.KVMMissing, "no /dev/kvm: KVM is not available on this host")},
			api.DoctorFail, "VMs get kvm and cannot start: chosen with --accel kvm", "--accel auto"},
		{"undecided", api.HostAccelResult{Configured: "auto", Usable: true, Reason: "/dev/kvm opens and speaks the KVM API; the first VM start test-boots under KVM and falls back to TCG if that fails"},
			api.DoctorOK, "not decided yet: /dev/kvm opens", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := testDoctorHost(t)
			res := tc.res
			h.view = daemonView{running: true, accel: &res}
			r := doctorRow(t, h, "accelerator")
			doctortest.Want(t, r, tc.status, tc.detail)
			if !strings.Contains(r.Fix, tc.fix) || (tc.fix == "") != (r.Fix == "") {
				t.Errorf("fix %q, want %q", r.Fix, tc.fix)
			}
		})
	}

	// The system install's daemon: its owner joins the group, and
	// systemd restarts it.
	h := testDoctorHost(t)
	h.owner, h.system = "alice", true
	h.view = daemonView{running: true, accel: &api.HostAccelResult{Configured: "auto", Accel: "tcg", Usable: true, Reason: "denied", Probe: probe(false, api.KVMDenied, "denied")}}
	if r := doctorRow(t, h, "accelerator"); r.Fix != "sudo usermod -aG kvm alice, then log in again and sudo systemctl restart bangerd.service" {
		t.Errorf("the system install's fix: %q", r.Fix)
	}

	// Through the socket (bangerd doctor without a daemon of its own):
	// the checks ask host.accel of the daemon there.
	sock := filepath.Join(t.TempDir(), "run", "bangerd.sock")
	fakeDoctorDaemon(t, sock)
	h = testDoctorHost(t)
	h.view = askDaemon(context.Background(), sock)
	doctortest.Want(t, doctorRow(t, h, "accelerator"), api.DoctorWarn, "tcg, software emulation (seconds slower per boot), not KVM: KVM cannot run guests here: fake")
	doctortest.Want(t, doctorRow(t, h, "kernel"), api.DoctorFail, "no kernel") // not built, and no kernel
	if v := askDaemon(context.Background(), filepath.Join(t.TempDir(), "none.sock")); v.running {
		t.Errorf("no daemon: %+v", v)
	}
}

// fakeDoctorDaemon serves ping, host.accel and image.show on sock (and
// holds its stream socket), as a daemon without the default image.
func fakeDoctorDaemon(t *testing.T, sock string) {
	t.Helper()
	methods := rpc.Methods{
		api.MethodPing: rpc.Handle(func(context.Context, rpc.NoParams) (api.PingResult, error) {
			return api.PingResult{Version: "test", PID: os.Getpid(), UptimeMS: 1500}, nil
		}),
		api.MethodHostAccel: rpc.Handle(func(context.Context, rpc.NoParams) (api.HostAccelResult, error) {
			return api.HostAccelResult{Configured: "auto", Accel: "tcg", Usable: true, Reason: "KVM cannot run guests here: fake"}, nil
		}),
		api.MethodImageShow: rpc.Handle(func(_ context.Context, p api.VMRef) (api.Image, error) {
			return api.Image{}, rpc.Errorf(rpc.CodeNotFound, "no image %s", p.Name)
		}),
	}
	doctortest.Daemon(t, sock, methods)
}

func TestCheckKernelAndBusybox(t *testing.T) {
	h := testDoctorHost(t)
	doctortest.Want(t, doctorRow(t, h, "kernel"), api.DoctorFail, "no kernel in")
	doctortest.WriteFile(t, filepath.Join(h.bootDir, "vmlinuz-6.1.0-9-amd64"), "k", 0o644)
	doctortest.WriteFile(t, filepath.Join(h.bootDir, "vmlinuz-6.1.0-10-amd64"), "k", 0o644)
	doctortest.Want(t, doctorRow(t, h, "kernel"), api.DoctorOK, "vmlinuz-6.1.0-10-amd64 for the default image")

	doctortest.Want(t, doctorRow(t, h, "busybox"), api.DoctorFail, "no "+h.busybox)
	doctortest.WriteFile(t, h.busybox, "#!/bin/sh\n", 0o755)
	doctortest.Want(t, doctorRow(t, h, "busybox"), api.DoctorFail, "not an executable busybox")
	if sh, err := exec.LookPath("sh"); err == nil {
		if b, err := os.ReadFile(sh); err == nil {
			doctortest.WriteFile(t, h.busybox, string(b), 0o755)
			if r := doctorRow(t, h, "busybox"); r.Status == api.DoctorFail {
				doctortest.Want(t, r, api.DoctorFail, "dynamically linked")
			}
		}
	}
	if self, err := os.Executable(); err == nil {
		if b, err := os.ReadFile(self); err == nil {
			doctortest.WriteFile(t, h.busybox, string(b), 0o755)
			if r := doctorRow(t, h, "busybox"); r.Status != api.DoctorOK && !strings.Contains(r.Detail, "dynamically") {
				t.Errorf("an ELF file: %+v", r)
			}
		}
	}

	// Once the daemon has the default image, the host's parts are only
	// needed to build it again.
	h = testDoctorHost(t)
	h.view = daemonView{running: true, image: &api.Image{Name: "default"}}
	doctortest.Want(t, doctorRow(t, h, "kernel"), api.DoctorOK, "the default image is built")
	doctortest.Want(t, doctorRow(t, h, "busybox"), api.DoctorWarn, "needed only to build the default image again")
}

// The standby row: what the daemon's image says of its standbys.
func TestCheckStandby(t *testing.T) {
	h := testDoctorHost(t)
	doctortest.Want(t, doctorRow(t, h, "standby"), api.DoctorSkip, "not running")
	h.view = daemonView{running: true, image: &api.Image{Name: "default"}}
	doctortest.Want(t, doctorRow(t, h, "standby"), api.DoctorSkip, "no warm snapshot yet")
	h.view.image.Warm = &api.WarmSnapshot{}
	h.view.image.Standby = &api.StandbyStatus{Want: 1, Ready: 1, PIDs: []int{42}}
	doctortest.Want(t, doctorRow(t, h, "standby"), api.DoctorOK, "1 of 1 ready (qemu pid 42)")
	h.view.image.Standby = &api.StandbyStatus{Want: 1, Skipped: "making one failed: QEMU did not answer", SkippedAt: time.Now()}
	doctortest.Want(t, doctorRow(t, h, "standby"), api.DoctorWarn, "making one failed: QEMU did not answer")
}
