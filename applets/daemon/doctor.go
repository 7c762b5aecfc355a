package daemon

import (
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"banger/applets/daemon/engine"
	"banger/applets/daemon/imagestore"
	"banger/internal/api"
	"banger/internal/doctor"
	"banger/internal/service"
	"banger/packaging"
	"banger/rpc"
)

// The daemon's rows of `banger doctor`: what it needs on this host, each
// checked where it is used. A running daemon answers them (host.doctor)
// with what it knows (its accelerator's answer, the default image, its
// standbys); without one, `bangerd doctor` runs the same checks as the
// client's user and asks the daemon at --socket, if any, what it can.

// doctorToolTimeout bounds a tool's --version.
const doctorToolTimeout = 5 * time.Second

// doctorHost is what the daemon's checks look at: the host, or fakes in
// tests, and what the daemon knows.
type doctorHost struct {
	uid    int
	owner  string // the system install's owner; "" when there is none
	system bool   // the daemon is the system install's (systemd runs it)

	bootDir  string
	busybox  string
	kvm      string
	lookPath func(name string) (string, error)
	view     daemonView
}

// daemonView is what a daemon said of itself.
type daemonView struct {
	running  bool
	accel    *api.HostAccelResult
	accelErr error      // unknown_method: a daemon older than host.accel
	image    *api.Image // the default image, when it is built
	imageErr error      // not_found: not built yet
}

// daemonChecks is every row the daemon makes, each named as the client
// shows it.
func daemonChecks() []doctor.Check[*doctorHost] {
	return []doctor.Check[*doctorHost]{
		{Name: "qemu-system-x86_64", Run: checkTool("qemu-system-x86_64", "qemu-system-x86", "")},
		{Name: "qemu-img", Run: checkTool("qemu-img", "qemu-utils", "")},
		{Name: "accelerator", Run: checkAccel},
		{Name: "kernel", Run: checkKernel},
		{Name: "busybox", Run: checkBusybox},
		{Name: "mkfs.ext4", Run: checkTool("mkfs.ext4", "e2fsprogs", "")},
		{Name: "mmdebstrap", Run: checkTool("mmdebstrap", "mmdebstrap uidmap", "the default image (Debian) and `image build --distro` are built with it; `--image tiny` and imported images work without")},
		{Name: "git", Run: checkTool("git", "git", "vm run copies a git work tree with it")},
		{Name: "standby", Run: checkStandby},
	}
}

func newDoctorHost(uid int, owner string, system bool, view daemonView) *doctorHost {
	return &doctorHost{uid: uid, owner: owner, system: system,
		bootDir: imagestore.DefaultBootDir, busybox: imagestore.DefaultBusybox, kvm: engine.KVMDevice,
		lookPath: imagestore.LookTool, view: view}
}

// hostDoctor answers host.doctor: the checks, with what this daemon
// knows.
func (d *daemon) hostDoctor(ctx context.Context, _ rpc.NoParams) (api.DoctorResult, error) {
	view := daemonView{running: true}
	if res, err := d.hostAccel(ctx, rpc.NoParams{}); err == nil {
		view.accel = &res
	} else {
		view.accelErr = err
	}
	view.image, view.imageErr = builtinInUse(func(name string) (api.Image, error) {
		return d.images.show(ctx, api.VMRef{Name: name})
	})
	owner := ""
	if d.system {
		// The system install's daemon runs as its owner.
		if u, err := user.Current(); err == nil {
			owner = u.Username
		}
	}
	h := newDoctorHost(os.Getuid(), owner, d.system, view)
	return api.DoctorResult{Rows: doctor.Run(ctx, h, daemonChecks())}, nil
}

// newDoctorCommand is `bangerd doctor`: the daemon's checks without a
// daemon running them, printed as JSON for `banger doctor`.
func newDoctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "run the daemon's checks of this host as this user and print them as JSON (banger doctor shows them)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", Usage: "ask the daemon at `PATH`, if it answers, what it knows (its accelerator, the default image)"},
			&cli.BoolFlag{Name: "system", Usage: "the socket is the system install's daemon"},
			&cli.StringFlag{Name: "owner", Usage: "the system install's owner `USER`"},
		},
		Action: func(c *cli.Context) error {
			view := askDaemon(c.Context, c.String("socket"))
			h := newDoctorHost(os.Getuid(), c.String("owner"), c.Bool("system"), view)
			b, err := json.Marshal(api.DoctorResult{Rows: doctor.Run(c.Context, h, daemonChecks())})
			if err != nil {
				return cli.Exit(err.Error(), service.ExitFailed)
			}
			_, err = fmt.Fprintf(c.App.Writer, "%s\n", b)
			return err
		},
	}
}

// askDaemon is what the daemon at socket says of itself; never one
// started.
func askDaemon(ctx context.Context, socket string) daemonView {
	var v daemonView
	if socket == "" {
		return v
	}
	client := &rpc.Client{Socket: socket}
	call := func(timeout time.Duration, method string, params, result any) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return client.Call(ctx, method, params, result)
	}
	var ping api.PingResult
	if call(doctor.CallTimeout, api.MethodPing, nil, &ping) != nil {
		return v
	}
	v.running = true
	// host.accel may run the daemon's one KVM test boot.
	var ha api.HostAccelResult
	if v.accelErr = call(doctor.SlowCallTimeout, api.MethodHostAccel, nil, &ha); v.accelErr == nil {
		v.accel = &ha
	}
	v.image, v.imageErr = builtinInUse(func(name string) (im api.Image, err error) {
		err = call(doctor.CallTimeout, api.MethodImageShow, api.VMRef{Name: name}, &im)
		return im, err
	})
	return v
}

// builtinInUse is the built-in image the doctor reports on: the default
// image once it is made, else tiny once it is (a host that boots only
// tiny), else the default's not-found.
func builtinInUse(show func(name string) (api.Image, error)) (*api.Image, error) {
	im, err := show(api.DefaultImage)
	if rpc.CodeOf(err) == rpc.CodeNotFound {
		if tiny, terr := show(api.TinyImage); terr == nil {
			return &tiny, nil
		}
	}
	if err != nil {
		return nil, err
	}
	return &im, nil
}

// restartFix says how to restart the daemon.
func (h *doctorHost) restartFix() string { return packaging.RestartDaemon(h.system) }

// checkTool finds a program banger runs and its version; a missing one
// fails when banger cannot work without it, and warns, saying what
// needs it, when banger can (without is "").
func checkTool(name, pkg, without string) func(context.Context, *doctorHost) api.DoctorRow {
	return func(ctx context.Context, h *doctorHost) api.DoctorRow {
		p, err := h.lookPath(name)
		if err != nil {
			fix := "apt-get install " + pkg
			if without != "" {
				return doctor.Warn("tool_missing", name+" is not installed; "+without, fix)
			}
			return doctor.Fail("tool_missing", name+" is not installed", fix)
		}
		if v := toolVersion(ctx, p); v != "" {
			return doctor.OK(p + ": " + v)
		}
		return doctor.OK(p)
	}
}

// toolVersion is the first line of `TOOL --version`, or "" (mkfs.ext4
// has no --version; -V prints to stderr, which is fine to leave out).
func toolVersion(ctx context.Context, p string) string {
	ctx, cancel := context.WithTimeout(ctx, doctorToolTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, p, "--version").Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

// checkAccel shows the accelerator the daemon's VMs get (host.accel):
// the daemon decides with one test boot under KVM and keeps the answer.
// Without a daemon that says, it checks the KVM device as the probe
// starts, without booting anything.
func checkAccel(ctx context.Context, h *doctorHost) api.DoctorRow {
	v := h.view
	note := ""
	switch {
	case v.accel != nil:
		return accelRow(h, v.accel)
	case !v.running:
		note = "; the daemon is not running (it test-boots under KVM before it uses it)"
	case rpc.CodeOf(v.accelErr) == rpc.CodeUnknownMethod:
		note = "; this daemon is older and does not report its accelerator (" + h.restartFix() + " to run this version)"
	case rpc.CodeOf(v.accelErr) == rpc.CodeUnavailable:
		// No QEMU: nothing runs VMs, whatever /dev/kvm says.
		return doctor.Fail("engine_missing", "the daemon cannot run VMs: "+v.accelErr.Error(), "apt-get install qemu-system-x86")
	case v.accelErr != nil:
		note = "; the daemon did not say which it uses (" + v.accelErr.Error() + ")"
	}
	if h.uid == 0 && h.owner != "" {
		note += "; checked as root, the daemon runs as " + h.owner
	}
	const tcg = ": VMs run under TCG (software emulation), seconds slower per boot"
	if st, ok := engine.OpenKVM(h.kvm); !ok {
		return doctor.Warn(st.Code, st.Reason+tcg+note, h.kvmFix(st.Code))
	}
	return doctor.OK(h.kvm + " opens and speaks KVM API 12; the daemon test-boots once before it uses KVM" + note)
}

// accelRow is the daemon's own answer: KVM is ok, a fall back to TCG
// warns with the probe's reason, and only a choice VMs cannot start
// with (--accel kvm where KVM cannot run guests) fails.
func accelRow(h *doctorHost, a *api.HostAccelResult) api.DoctorRow {
	detail := a.Reason
	code := api.KVMCannotRun
	if p := a.Probe; p != nil {
		detail += fmt.Sprintf(" (probed %s, in %.0f ms)", p.ProbedAt.Local().Format("2006-01-02 15:04"), p.TookMS)
		if p.Code != "" {
			code = p.Code
		}
	}
	switch {
	case !a.Usable:
		return doctor.Fail(code, "VMs get "+a.Accel+" and cannot start: "+detail,
			"restart the daemon with --accel auto (BANGER_ACCEL=auto) to fall back to TCG, or "+h.kvmFix(code))
	case a.Accel == api.AccelKVM:
		return doctor.OK("kvm: " + detail)
	case a.Accel == api.AccelTCG && a.Configured == api.AccelTCG:
		if a.Probe != nil && a.Probe.Usable {
			detail += "; KVM would work here (--accel auto)"
		}
		return doctor.OK("tcg (software emulation): " + detail)
	case a.Accel == api.AccelTCG:
		return doctor.Warn(code, "tcg, software emulation (seconds slower per boot), not KVM: "+detail, h.kvmFix(code))
	}
	return doctor.OK("not decided yet: " + detail)
}

// kvmFix says how to get KVM working, from why it does not.
func (h *doctorHost) kvmFix(code string) string {
	owner := "$USER"
	if h.owner != "" {
		owner = h.owner
	}
	switch code {
	case api.KVMDenied:
		return "sudo usermod -aG kvm " + owner + ", then log in again and " + h.restartFix()
	case api.KVMMissing:
		return "run on a host with KVM: bare metal, or a VM with nested virtualisation on"
	case api.KVMBadDevice:
		return "check that " + h.kvm + " is the KVM device (modprobe kvm_intel or kvm_amd)"
	}
	return "KVM opens but cannot run a guest here (nested or emulated?): turn nested virtualisation on or run on bare metal; the daemon probes again when QEMU, the host kernel or /dev/kvm change"
}

// imageBuilt says whether the daemon has the default image, and so no
// longer needs the host's kernel and busybox to make it.
func (h *doctorHost) imageBuilt() bool { return h.view.image != nil }

// checkKernel finds the host kernel the default image is made from.
func checkKernel(ctx context.Context, h *doctorHost) api.DoctorRow {
	built := h.imageBuilt()
	k, err := imagestore.HostKernel(h.bootDir)
	switch {
	case err != nil && built:
		return doctor.OK(fmt.Sprintf("the default image is built; no kernel in %s (needed only to build it again)", h.bootDir))
	case err != nil:
		return doctor.Fail("kernel_missing", fmt.Sprintf("no kernel in %s (vmlinuz-*) for the default image", h.bootDir), "apt-get install linux-image-amd64")
	}
	f, err := os.Open(k)
	if err != nil {
		fix := "sudo chmod 0644 " + k + " (the daemon reads it as its user)"
		if built {
			return doctor.Warn("kernel_unreadable", fmt.Sprintf("cannot read %s: %v; needed only to build the default image again", k, err), fix)
		}
		return doctor.Fail("kernel_unreadable", fmt.Sprintf("cannot read %s: %v", k, err), fix)
	}
	f.Close()
	switch {
	case built:
		return doctor.OK(k + "; the default image is built")
	case h.view.running && rpc.CodeOf(h.view.imageErr) == rpc.CodeNotFound:
		return doctor.OK(k + "; the default image is made from it at the first vm run")
	}
	return doctor.OK(k + " for the default image")
}

// checkStandby says whether the default image has a standby ready for
// the next vm run, and why not when the daemon skipped one.
func checkStandby(ctx context.Context, h *doctorHost) api.DoctorRow {
	v := h.view
	switch {
	case !v.running:
		return doctor.Skip("the daemon is not running")
	case v.image == nil:
		return doctor.Skip("the default image has no warm snapshot yet (the first vm run saves one)")
	case v.image.Warm == nil:
		return doctor.Skip("the " + v.image.Name + " image has no warm snapshot yet (the first vm run saves one)")
	case v.image.Standby == nil || v.image.Standby.Want == 0:
		return doctor.OK("the daemon keeps no standbys (--standbys 0): warm starts restore the snapshot")
	}
	st := *v.image.Standby
	switch {
	case st.Ready > 0:
		return doctor.OK(st.Summary())
	case st.Skipped != "":
		return doctor.Warn("standby_skipped", "none for the "+v.image.Name+" image: "+st.Summary(),
			"free memory, or lower bangerd --standby-min-free; until then warm starts restore the snapshot (slower)")
	}
	return doctor.OK("the " + v.image.Name + " image's standby is on its way")
}

// checkBusybox checks the default image's root file system source: a
// statically linked busybox (a dynamic one has no libc in the guest).
func checkBusybox(ctx context.Context, h *doctorHost) api.DoctorRow {
	row := doctor.Fail
	later := ""
	if h.imageBuilt() {
		row, later = doctor.Warn, "; needed only to build the default image again"
	}
	const fix = "apt-get install busybox-static"
	f, err := elf.Open(h.busybox)
	if errors.Is(err, os.ErrNotExist) {
		return row("busybox_missing", "no "+h.busybox+later, fix)
	}
	if err != nil {
		return row("busybox_invalid", fmt.Sprintf("%s is not an executable busybox (%v)%s", h.busybox, err, later), fix)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return row("busybox_dynamic", h.busybox+" is dynamically linked (Debian's busybox)"+later, fix+" (it replaces busybox)")
		}
	}
	return doctor.OK(h.busybox + ", statically linked")
}
