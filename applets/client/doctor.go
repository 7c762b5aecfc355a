package client

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/urfave/cli/v2"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"banger/applets/daemon/imagestore"
	"banger/internal/api"
	"banger/internal/dirs"
	"banger/packaging"
	"banger/rpc"
)

// Statuses of a doctor row. Only fail makes `banger doctor` exit 1.
const (
	doctorOK   = "ok"
	doctorWarn = "warn" // works, but slower or with less than it could
	doctorFail = "fail" // something banger needs is missing or wrong
	doctorSkip = "skip" // does not apply here, and why
)

// What the root helper makes for bridged VMs (applets/helper).
const (
	bridgeName   = "banger0"
	natTableName = "banger"      // table ip banger
	natChainName = "postrouting" // its one chain
)

// Bounds of the doctor's calls: it must answer quickly, also when the
// daemon hangs. host.check may run sudo.
const (
	doctorCallTimeout = 3 * time.Second
	doctorHostTimeout = 10 * time.Second
	doctorToolTimeout = 5 * time.Second
)

// doctorRow is one line of `banger doctor`.
type doctorRow struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// doctorReport is `banger doctor --json`.
type doctorReport struct {
	OK   bool        `json:"ok"` // no row failed
	Rows []doctorRow `json:"rows"`
}

// doctorCheck makes one row; the table supplies its name.
type doctorCheck struct {
	name string
	run  func(ctx context.Context, h *doctorHost) doctorRow
}

// doctorChecks is every check, in the order they are shown. Adding one is
// adding a line.
func doctorChecks() []doctorCheck {
	return []doctorCheck{
		{"qemu-system-x86_64", checkTool("qemu-system-x86_64", "qemu-system-x86", true)},
		{"qemu-img", checkTool("qemu-img", "qemu-utils", true)},
		{"accelerator", checkAccel},
		{"kernel", checkKernel},
		{"busybox", checkBusybox},
		{"mkfs.ext4", checkTool("mkfs.ext4", "e2fsprogs", true)},
		{"git", checkTool("git", "git", false)},
		{"daemon", checkDaemon},
		{"daemon sockets", checkDaemonSockets},
		{"standby", checkStandby},
		{"helper", checkHelper},
		{"helper socket", checkHelperSocket},
		{"applet links", checkLinks},
		{"system install", checkInstall},
		{"unit " + packaging.DaemonUnit, checkUnit(packaging.DaemonUnit)},
		{"unit " + packaging.HelperUnit, checkUnit(packaging.HelperUnit)},
		{"sudoers", checkSudoers},
		{"bridge " + bridgeName, checkBridge},
		{"nat", checkNAT},
	}
}

func newDoctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check what banger needs on this host, each row with its fix (exit 1 when a check fails; starts nothing)",
		Flags: []cli.Flag{jsonFlag()},
		Action: action(func(c *cli.Context, s *session) error {
			if _, err := args(c, 0, 0); err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			rep := runDoctor(c.Context, newDoctorHost(s, envOf(c), self), doctorChecks())
			if err := output(c, rep, func(w io.Writer) { printDoctor(w, rep) }); err != nil {
				return err
			}
			if !rep.OK {
				return exitStatus(ExitFailed)
			}
			return nil
		}),
	}
}

func runDoctor(ctx context.Context, h *doctorHost, checks []doctorCheck) doctorReport {
	rep := doctorReport{OK: true, Rows: make([]doctorRow, 0, len(checks))}
	for _, c := range checks {
		row := c.run(ctx, h)
		row.Name = c.name
		rep.OK = rep.OK && row.Status != doctorFail
		rep.Rows = append(rep.Rows, row)
	}
	return rep
}

func printDoctor(w io.Writer, rep doctorReport) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tSTATUS\tDETAIL")
	count := map[string]int{}
	for _, r := range rep.Rows {
		count[r.Status]++
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Name, r.Status, r.Detail)
		if r.Fix != "" {
			fmt.Fprintf(tw, "\t\tfix: %s\n", r.Fix)
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "%d checks: %d ok, %d warn, %d fail, %d skip\n", len(rep.Rows),
		count[doctorOK], count[doctorWarn], count[doctorFail], count[doctorSkip])
}

func rowOK(detail string) doctorRow { return doctorRow{Status: doctorOK, Detail: detail} }
func rowSkip(detail string) doctorRow {
	return doctorRow{Status: doctorSkip, Detail: detail}
}
func rowWarn(detail, fix string) doctorRow {
	return doctorRow{Status: doctorWarn, Detail: detail, Fix: fix}
}
func rowFail(detail, fix string) doctorRow {
	return doctorRow{Status: doctorFail, Detail: detail, Fix: fix}
}

// doctorHost is what the checks look at: the machine, or fakes in tests.
type doctorHost struct {
	build   api.Build
	applets []string
	self    string // this binary
	uid     int
	socket  string // the daemon's, as the session chose it
	system  bool   // socket is the system install's daemon
	client  *rpc.Client

	sys       packaging.System // install.toml, units, sudoers, helper socket
	bootDir   string
	busybox   string
	kvm       string
	ipForward string
	lookPath  func(name string) (string, error)
	bridge    func(name string) (*bridgeInfo, error) // nil, nil: no such link
	nat       func() (*natInfo, error)               // nil, nil: no banger table

	cfg    *packaging.Config // install.toml, read once; nil when absent
	cfgErr error             // install.toml is there but cannot be read
	d      *daemonView       // asked once, on first use
}

func newDoctorHost(s *session, env Env, self string) *doctorHost {
	h := &doctorHost{
		build: env.Build, applets: env.Applets, self: self, uid: os.Getuid(),
		socket: s.socket, system: s.system, client: s.client(),
		sys:       packaging.System{Root: "/", Applets: env.Applets},
		bootDir:   imagestore.DefaultBootDir,
		busybox:   imagestore.DefaultBusybox,
		kvm:       "/dev/kvm",
		ipForward: "/proc/sys/net/ipv4/ip_forward",
		lookPath:  lookTool,
		bridge:    readBridge,
		nat:       readNAT,
	}
	h.readConfig()
	return h
}

func (h *doctorHost) readConfig() {
	cfg, err := h.sys.ReadConfig()
	switch {
	case err == nil:
		h.cfg = cfg
	case !errors.Is(err, os.ErrNotExist):
		h.cfgErr = err
	}
}

// daemonView is what the daemon answered, asked once and never started.
type daemonView struct {
	ping     *api.PingResult
	pingErr  error
	version  *api.VersionResult
	host     *api.HostCheckResult
	hostErr  error
	accel    *api.HostAccelResult
	accelErr error      // unknown_method: a daemon older than host.accel
	image    *api.Image // the default image, when it is built
	imageErr error      // not_found: not built yet
}

func (h *doctorHost) daemon(ctx context.Context) *daemonView {
	if h.d != nil {
		return h.d
	}
	d := &daemonView{}
	h.d = d
	call := func(timeout time.Duration, method string, params, result any) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return h.client.Call(ctx, method, params, result)
	}
	var ping api.PingResult
	if d.pingErr = call(doctorCallTimeout, api.MethodPing, nil, &ping); d.pingErr != nil {
		return d
	}
	d.ping = &ping
	var v api.VersionResult
	if call(doctorCallTimeout, api.MethodVersion, nil, &v) == nil {
		d.version = &v
	}
	var hc api.HostCheckResult
	if d.hostErr = call(doctorHostTimeout, api.MethodHostCheck, nil, &hc); d.hostErr == nil {
		d.host = &hc
	}
	// host.accel may run the daemon's one KVM test boot.
	var ha api.HostAccelResult
	if d.accelErr = call(doctorHostTimeout, api.MethodHostAccel, nil, &ha); d.accelErr == nil {
		d.accel = &ha
	}
	var im api.Image
	if d.imageErr = call(doctorCallTimeout, api.MethodImageShow, api.VMRef{Name: api.DefaultImage}, &im); d.imageErr == nil {
		d.image = &im
	}
	return d
}

// startFix says how to start the daemon the client talks to.
func (h *doctorHost) startFix() string {
	if h.system {
		return "sudo systemctl start " + packaging.DaemonUnit + " (journalctl -u " + packaging.DaemonUnit + ")"
	}
	return "banger daemon start (commands that need it also start it)"
}

// restartFix says how to restart that daemon.
func (h *doctorHost) restartFix() string {
	if h.system {
		return "sudo systemctl restart " + packaging.DaemonUnit
	}
	return "banger daemon stop && banger daemon start"
}

// reinstallFix is the command that writes the system install again.
func (h *doctorHost) reinstallFix() string {
	if h.cfg == nil {
		return "sudo banger system install --owner USER"
	}
	return fmt.Sprintf("sudo banger system install --owner %s --prefix %s --helper %s", h.cfg.Owner, h.cfg.Prefix, h.cfg.Helper)
}

// helperFix says how to get the system install's helper going again.
func (h *doctorHost) helperFix() string {
	if h.cfg != nil && h.cfg.Helper == packaging.HelperService {
		return "sudo systemctl restart " + packaging.HelperUnit + " (journalctl -u " + packaging.HelperUnit + ")"
	}
	return h.reinstallFix()
}

// checkTool finds a program banger runs and its version; a missing one
// fails when banger cannot work without it (else it warns).
func checkTool(name, pkg string, needed bool) func(context.Context, *doctorHost) doctorRow {
	return func(ctx context.Context, h *doctorHost) doctorRow {
		p, err := h.lookPath(name)
		if err != nil {
			fix := "apt-get install " + pkg
			if !needed {
				return rowWarn(name+" is not installed; vm run copies a git work tree with it", fix)
			}
			return rowFail(name+" is not installed", fix)
		}
		if v := toolVersion(ctx, p); v != "" {
			return rowOK(p + ": " + v)
		}
		return rowOK(p)
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

// lookTool finds a program as the daemon does: on PATH, then in the sbin
// directories a normal user's PATH lacks (e2fsprogs installs there).
func lookTool(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		q := filepath.Join(dir, name)
		if fi, serr := os.Stat(q); serr == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return q, nil
		}
	}
	return "", err
}

// checkAccel shows the accelerator the daemon's VMs get (host.accel):
// the daemon decides with one test boot under KVM and keeps the answer.
// Without a daemon that says, it checks /dev/kvm as the daemon's probe
// starts, without booting anything.
func checkAccel(ctx context.Context, h *doctorHost) doctorRow {
	d := h.daemon(ctx)
	note := ""
	switch {
	case d.accel != nil:
		return accelRow(h, d.accel)
	case d.ping == nil:
		note = "; the daemon is not running (it test-boots under KVM before it uses it)"
	case rpc.CodeOf(d.accelErr) == rpc.CodeUnknownMethod:
		note = "; this daemon is older and does not report its accelerator (" + h.restartFix() + " to run this version)"
	case rpc.CodeOf(d.accelErr) == rpc.CodeUnavailable:
		// No QEMU: nothing runs VMs, whatever /dev/kvm says.
		return rowFail("the daemon cannot run VMs: "+d.accelErr.Error(), "apt-get install qemu-system-x86")
	case d.accelErr != nil:
		note = "; the daemon did not say which it uses (" + d.accelErr.Error() + ")"
	}
	if h.uid == 0 && h.cfg != nil {
		note += "; checked as root, the daemon runs as " + h.cfg.Owner
	}
	const tcg = ": VMs run under TCG (software emulation), seconds slower per boot"
	err := openKVM(h.kvm)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return rowWarn("no "+h.kvm+tcg+note, kvmFix(h, "no /dev/kvm"))
	case errors.Is(err, os.ErrPermission):
		return rowWarn(h.kvm+": permission denied"+tcg+note, kvmFix(h, "permission denied"))
	case err != nil:
		return rowWarn(err.Error()+tcg+note, kvmFix(h, "API version"))
	}
	return rowOK(h.kvm + " opens and speaks KVM API 12; the daemon test-boots once before it uses KVM" + note)
}

// accelRow is the daemon's own answer: KVM is ok, a fall back to TCG
// warns with the probe's reason, and only a choice VMs cannot start
// with (--accel kvm where KVM cannot run guests) fails.
func accelRow(h *doctorHost, a *api.HostAccelResult) doctorRow {
	detail := a.Reason
	if p := a.Probe; p != nil {
		detail += fmt.Sprintf(" (probed %s, in %.0f ms)", p.ProbedAt.Local().Format("2006-01-02 15:04"), p.TookMS)
	}
	why := ""
	if a.Probe != nil {
		why = a.Probe.Reason
	}
	switch {
	case !a.Usable:
		return rowFail("VMs get "+a.Accel+" and cannot start: "+detail,
			"restart the daemon with --accel auto (BANGER_ACCEL=auto) to fall back to TCG, or "+kvmFix(h, why))
	case a.Accel == api.AccelKVM:
		return rowOK("kvm: " + detail)
	case a.Accel == api.AccelTCG && a.Configured == api.AccelTCG:
		if a.Probe != nil && a.Probe.Usable {
			detail += "; KVM would work here (--accel auto)"
		}
		return rowOK("tcg (software emulation): " + detail)
	case a.Accel == api.AccelTCG:
		return rowWarn("tcg, software emulation (seconds slower per boot), not KVM: "+detail, kvmFix(h, why))
	}
	return rowOK("not decided yet: " + detail)
}

// kvmFix says how to get KVM working, from why it does not.
func kvmFix(h *doctorHost, why string) string {
	owner := "$USER"
	if h.cfg != nil {
		owner = h.cfg.Owner
	}
	switch {
	case strings.Contains(why, "permission denied"):
		return "sudo usermod -aG kvm " + owner + ", then log in again and " + h.restartFix()
	case strings.Contains(why, "no /dev/kvm"):
		return "run on a host with KVM: bare metal, or a VM with nested virtualisation on"
	case strings.Contains(why, "API version"):
		return "check that " + h.kvm + " is the KVM device (modprobe kvm_intel or kvm_amd)"
	}
	return "KVM opens but cannot run a guest here (nested or emulated?): turn nested virtualisation on or run on bare metal; the daemon probes again when QEMU, the host kernel or /dev/kvm change"
}

// openKVM opens the KVM device and asks its API version, as the daemon's
// probe does before its test boot.
func openKVM(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	const kvmGetAPIVersion = 0xae00 // _IO(KVMIO, 0x00)
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil || v != 12 {
		return fmt.Errorf("%s: KVM API version %d (%v), want 12", p, v, err)
	}
	return nil
}

// imageBuilt says whether the daemon has the default image, and so no
// longer needs the host's kernel and busybox to make it.
func (h *doctorHost) imageBuilt(ctx context.Context) bool {
	return h.daemon(ctx).image != nil
}

// checkKernel finds the host kernel the default image is made from.
func checkKernel(ctx context.Context, h *doctorHost) doctorRow {
	built := h.imageBuilt(ctx)
	k, err := imagestore.HostKernel(h.bootDir)
	switch {
	case err != nil && built:
		return rowOK(fmt.Sprintf("the default image is built; no kernel in %s (needed only to build it again)", h.bootDir))
	case err != nil:
		return rowFail(fmt.Sprintf("no kernel in %s (vmlinuz-*) for the default image", h.bootDir), "apt-get install linux-image-amd64")
	}
	f, err := os.Open(k)
	if err != nil {
		fix := "sudo chmod 0644 " + k + " (the daemon reads it as its user)"
		if built {
			return rowWarn(fmt.Sprintf("cannot read %s: %v; needed only to build the default image again", k, err), fix)
		}
		return rowFail(fmt.Sprintf("cannot read %s: %v", k, err), fix)
	}
	f.Close()
	switch d := h.daemon(ctx); {
	case built:
		return rowOK(k + "; the default image is built")
	case d.ping != nil && rpc.CodeOf(d.imageErr) == rpc.CodeNotFound:
		return rowOK(k + "; the default image is made from it at the first vm run")
	}
	return rowOK(k + " for the default image")
}

// checkStandby says whether the default image has a standby ready for
// the next vm run, and why not when the daemon skipped one.
func checkStandby(ctx context.Context, h *doctorHost) doctorRow {
	d := h.daemon(ctx)
	switch {
	case d.ping == nil:
		return rowSkip("the daemon is not running")
	case d.image == nil || d.image.Warm == nil:
		return rowSkip("the default image has no warm snapshot yet (the first vm run saves one)")
	case d.image.Standby == nil || d.image.Standby.Want == 0:
		return rowOK("the daemon keeps no standbys (--standbys 0): warm starts restore the snapshot")
	}
	st := *d.image.Standby
	switch {
	case st.Ready > 0:
		return rowOK(standbySummary(st))
	case st.Skipped != "":
		return rowWarn("none for the default image: "+standbySummary(st),
			"free memory, or lower bangerd --standby-min-free; until then warm starts restore the snapshot (slower)")
	}
	return rowOK("the default image's standby is on its way")
}

// checkBusybox checks the default image's root file system source: a
// statically linked busybox (a dynamic one has no libc in the guest).
func checkBusybox(ctx context.Context, h *doctorHost) doctorRow {
	row := rowFail
	later := ""
	if h.imageBuilt(ctx) {
		row, later = rowWarn, "; needed only to build the default image again"
	}
	const fix = "apt-get install busybox-static"
	f, err := elf.Open(h.busybox)
	if errors.Is(err, os.ErrNotExist) {
		return row("no "+h.busybox+later, fix)
	}
	if err != nil {
		return row(fmt.Sprintf("%s is not an executable busybox (%v)%s", h.busybox, err, later), fix)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return row(h.busybox+" is dynamically linked (Debian's busybox)"+later, fix+" (it replaces busybox)")
		}
	}
	return rowOK(h.busybox + ", statically linked")
}

// checkDaemon asks the daemon for its version; it never starts one.
func checkDaemon(ctx context.Context, h *doctorHost) doctorRow {
	d := h.daemon(ctx)
	where := h.socket
	if h.system {
		where += " (the system install's)"
	}
	switch {
	case errors.Is(d.pingErr, rpc.ErrUnreachable) && h.system:
		return rowFail("not answering on "+where, h.startFix())
	case errors.Is(d.pingErr, rpc.ErrUnreachable):
		return rowWarn("not running on "+where, h.startFix())
	case d.pingErr != nil:
		return rowFail(fmt.Sprintf("on %s: %v", where, d.pingErr), h.restartFix())
	}
	detail := fmt.Sprintf("bangerd %s, pid %d, up %s, on %s", d.ping.Version, d.ping.PID, fmtUptime(d.ping.UptimeMS), where)
	switch {
	case d.version != nil && d.version.Protocol != rpc.Version:
		return rowFail(fmt.Sprintf("%s: speaks protocol %d, this client %d", detail, d.version.Protocol, rpc.Version), h.restartFix())
	case d.ping.Version != h.build.String():
		return rowWarn(fmt.Sprintf("%s; this client is %s", detail, h.build), h.restartFix()+" (to run this version)")
	}
	return rowOK(detail)
}

// checkDaemonSockets checks the daemon's sockets and their directory:
// the owner's alone (sockets 0600, directory 0700).
func checkDaemonSockets(ctx context.Context, h *doctorHost) doctorRow {
	if _, err := os.Lstat(h.socket); errors.Is(err, os.ErrNotExist) && h.daemon(ctx).ping == nil {
		return rowSkip("no socket at " + h.socket + " (the daemon is not running)")
	}
	owner := h.uid
	if h.system && h.cfg != nil {
		owner = h.cfg.UID
	}
	var bad []string
	bad = append(bad, fileProblems(filepath.Dir(h.socket), fs.ModeDir, 0o700, owner)...)
	bad = append(bad, fileProblems(h.socket, fs.ModeSocket, 0o600, owner)...)
	bad = append(bad, fileProblems(dirs.StreamSocket(h.socket), fs.ModeSocket, 0o600, owner)...)
	if len(bad) > 0 {
		return rowFail(strings.Join(bad, "; "), "remove what is not the daemon's, then "+h.restartFix()+" (it makes its directory 0700 and its sockets 0600)")
	}
	return rowOK(fmt.Sprintf("%s and %s 0600, directory 0700, uid %d", filepath.Base(h.socket), filepath.Base(dirs.StreamSocket(h.socket)), owner))
}

// fileProblems says how p differs from a kind, a mode and an owner.
func fileProblems(p string, kind, perm fs.FileMode, uid int) []string {
	fi, err := os.Lstat(p)
	if err != nil {
		return []string{err.Error()}
	}
	var bad []string
	if fi.Mode().Type() != kind {
		bad = append(bad, fmt.Sprintf("%s is a %s, not a %s", p, kindName(fi.Mode().Type()), kindName(kind)))
	}
	if fi.Mode().Perm() != perm {
		bad = append(bad, fmt.Sprintf("%s has mode %04o, want %04o", p, fi.Mode().Perm(), perm))
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != uid {
		bad = append(bad, fmt.Sprintf("%s is owned by uid %d, want %d", p, st.Uid, uid))
	}
	return bad
}

func kindName(m fs.FileMode) string {
	switch m {
	case 0:
		return "regular file"
	case fs.ModeDir:
		return "directory"
	case fs.ModeSocket:
		return "socket"
	case fs.ModeSymlink:
		return "symlink"
	}
	return m.String()
}

// checkHelper asks the daemon to reach the root helper (host.check). A
// user-mode daemon works without one; bridged networking does not.
func checkHelper(ctx context.Context, h *doctorHost) doctorRow {
	d := h.daemon(ctx)
	switch {
	case d.ping == nil:
		return rowSkip("asked through the daemon (host.check), which is not running")
	case d.hostErr != nil && h.system:
		return rowFail("the daemon cannot reach it: "+d.hostErr.Error(), h.helperFix())
	case d.hostErr != nil:
		return rowWarn("the daemon cannot reach it ("+d.hostErr.Error()+"); bridged networking needs it",
			"sudo banger system install --owner $USER (a helper service), or a sudoers rule for the daemon's sudo mode (--helper sudo)")
	}
	hc := d.host
	detail := fmt.Sprintf("mode %s (%s), bangerd-root %s, euid %d", hc.HelperMode, hc.HelperPath, hc.Helper.Version, hc.Helper.EUID)
	switch {
	case hc.Helper.EUID != 0:
		return rowFail(detail+": the helper does not run as root", h.helperFix())
	case hc.Helper.Version != h.build.String():
		return rowWarn(detail+"; this client is "+h.build.String(), h.helperFix()+" (to run this version)")
	}
	return rowOK(detail)
}

// checkHelperSocket checks the helper service's socket: the owner's,
// 0600, in a directory of root's that others may only pass (0711).
func checkHelperSocket(ctx context.Context, h *doctorHost) doctorRow {
	sock := h.sys.Path(packaging.HelperSocket)
	service := h.cfg != nil && h.cfg.Helper == packaging.HelperService
	if _, err := os.Lstat(sock); errors.Is(err, os.ErrNotExist) {
		if service {
			return rowFail("no socket at "+packaging.HelperSocket+": the helper service is not running", "sudo systemctl start "+packaging.HelperUnit+" (journalctl -u "+packaging.HelperUnit+")")
		}
		return rowSkip("no helper service socket at " + packaging.HelperSocket + " (user mode or sudo mode)")
	}
	fi, err := os.Lstat(sock)
	if err != nil {
		return rowFail(err.Error(), "")
	}
	uid := int(fi.Sys().(*syscall.Stat_t).Uid)
	owner := fmt.Sprintf("uid %d", uid)
	if h.cfg != nil {
		// Without install.toml the helper was started by hand, for
		// whichever owner it was given: any owner will do.
		uid, owner = h.cfg.UID, fmt.Sprintf("uid %d, the owner %s", h.cfg.UID, h.cfg.Owner)
	}
	bad := fileProblems(filepath.Dir(sock), fs.ModeDir, 0o711, 0)
	bad = append(bad, fileProblems(sock, fs.ModeSocket, 0o600, uid)...)
	if len(bad) > 0 {
		return rowFail(strings.Join(bad, "; "), "sudo systemctl restart "+packaging.HelperUnit+" (it makes the socket the owner's, 0600)")
	}
	return rowOK(fmt.Sprintf("%s 0600, %s; directory root's, 0711", packaging.HelperSocket, owner))
}

// checkLinks checks the applet links beside this binary. A missing one
// only warns (the client starts the daemon through /proc/self/exe); one
// that runs another binary fails.
func checkLinks(ctx context.Context, h *doctorHost) doctorRow {
	dir := filepath.Dir(h.self)
	sts, err := packaging.CheckLinks(dir, h.self, h.applets)
	if err != nil {
		return rowFail(err.Error(), "")
	}
	var missing, foreign []string
	for _, s := range sts {
		switch s.State {
		case packaging.LinkMissing:
			missing = append(missing, s.Applet)
		case packaging.LinkForeign:
			foreign = append(foreign, s.Applet+" ("+s.Detail+")")
		}
	}
	fix := "banger links install " + dir
	switch {
	case len(foreign) > 0:
		return rowFail("in "+dir+", not this binary: "+strings.Join(foreign, ", "), "remove them, then "+fix)
	case len(missing) > 0:
		return rowWarn("missing in "+dir+": "+strings.Join(missing, ", "), fix)
	}
	return rowOK(fmt.Sprintf("%d applets linked to %s", len(sts), h.self))
}

// checkInstall reads install.toml and checks the installed binary and its
// links, which the units run.
func checkInstall(ctx context.Context, h *doctorHost) doctorRow {
	switch {
	case h.cfgErr != nil:
		return rowFail(h.cfgErr.Error(), h.reinstallFix())
	case h.cfg == nil:
		return rowSkip("no " + packaging.ConfigFile + ": user mode")
	}
	c := h.cfg
	detail := fmt.Sprintf("owner %s (uid %d), prefix %s, helper %s", c.Owner, c.UID, c.Prefix, c.Helper)
	if err := c.Validate(); err != nil {
		return rowFail(packaging.ConfigFile+": "+err.Error(), h.reinstallFix())
	}
	bin := h.sys.Path(c.Binary())
	if _, err := os.Stat(bin); err != nil {
		return rowFail(detail+"; "+err.Error(), h.reinstallFix())
	}
	sts, err := packaging.CheckLinks(filepath.Dir(bin), bin, h.applets)
	if err != nil || !packaging.LinksOK(sts) {
		var bad []string
		for _, s := range sts {
			if s.State != packaging.LinkOK {
				bad = append(bad, s.Applet+" "+s.State)
			}
		}
		return rowFail(detail+"; links beside "+c.Binary()+": "+strings.Join(bad, ", "), h.reinstallFix())
	}
	if h.uid != c.UID && h.uid != 0 {
		detail += fmt.Sprintf("; you (uid %d) are not the owner, so this client uses a daemon of your own", h.uid)
	}
	return rowOK(detail)
}

// checkUnit compares an installed unit with what this banger renders for
// install.toml: every hardening line of the rendering must be there. The
// rendering decides which apply: the daemon's unit in sudo mode has no
// NoNewPrivileges (sudo must gain root) and neither unit of the daemon
// bounds capabilities.
func checkUnit(unit string) func(context.Context, *doctorHost) doctorRow {
	hardening := []string{"NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "CapabilityBoundingSet"}
	return func(ctx context.Context, h *doctorHost) doctorRow {
		if h.cfg == nil {
			return rowSkip("no system install")
		}
		p := path.Join(packaging.UnitDir, unit)
		files, err := packaging.Render(*h.cfg)
		if err != nil {
			return rowFail(err.Error(), h.reinstallFix())
		}
		want, ok := files[p]
		if !ok {
			return rowSkip("helper mode " + h.cfg.Helper + " has no " + unit)
		}
		got, err := os.ReadFile(h.sys.Path(p))
		if err != nil {
			return rowFail(err.Error(), h.reinstallFix())
		}
		have := map[string]bool{}
		for _, l := range unitLines(got) {
			have[l] = true
		}
		var present, missing []string
		for _, l := range unitLines(want) {
			key, _, _ := strings.Cut(l, "=")
			if !slices.Contains(hardening, key) {
				continue
			}
			if have[l] {
				present = append(present, l)
			} else {
				missing = append(missing, l)
			}
		}
		switch {
		case len(missing) > 0:
			return rowFail(p+" lacks "+strings.Join(missing, ", "), h.reinstallFix())
		case !bytes.Equal(got, want):
			return rowWarn(p+" is hardened but differs from what this banger writes (an older install, or edited)", h.reinstallFix())
		}
		return rowOK(p + ": " + strings.Join(present, ", "))
	}
}

// unitLines are a unit file's directive lines, trimmed, without comments.
func unitLines(b []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l != "" && l[0] != '#' && l[0] != ';' && l[0] != '[' {
			out = append(out, l)
		}
	}
	return out
}

// checkSudoers checks the sudo mode's rule: root's, 0440, as rendered.
func checkSudoers(ctx context.Context, h *doctorHost) doctorRow {
	p := h.sys.Path(packaging.SudoersFile)
	_, err := os.Lstat(p)
	switch {
	case h.cfg == nil:
		return rowSkip("no system install")
	case h.cfg.Helper != packaging.HelperSudo && err == nil:
		return rowWarn(packaging.SudoersFile+" is left from sudo mode; helper mode is "+h.cfg.Helper, h.reinstallFix()+" (removes it)")
	case h.cfg.Helper != packaging.HelperSudo:
		return rowSkip("helper mode " + h.cfg.Helper + ": no sudoers rule")
	case err != nil:
		return rowFail(err.Error(), h.reinstallFix())
	}
	if bad := fileProblems(p, 0, 0o440, 0); len(bad) > 0 {
		return rowFail(strings.Join(bad, "; "), h.reinstallFix())
	}
	files, err := packaging.Render(*h.cfg)
	got, rerr := os.ReadFile(p)
	if err != nil || rerr != nil || !bytes.Equal(got, files[packaging.SudoersFile]) {
		return rowWarn(packaging.SudoersFile+" (0440, root's) differs from the rule this banger writes", h.reinstallFix())
	}
	return rowOK(packaging.SudoersFile + " 0440, root's, as rendered for " + h.cfg.Owner)
}

// bridgeInfo is what the doctor reads of a link.
type bridgeInfo struct {
	Kind  string   // "bridge" for a bridge
	Up    bool     // administratively up
	Addrs []string // IPv4, with prefix
}

func readBridge(name string) (*bridgeInfo, error) {
	l, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read link %s: %w", name, err)
	}
	b := &bridgeInfo{Kind: l.Type(), Up: l.Attrs().Flags&net.FlagUp != 0}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("read the addresses of %s: %w", name, err)
	}
	for _, a := range addrs {
		b.Addrs = append(b.Addrs, a.IPNet.String())
	}
	return b, nil
}

// checkBridge reads the bridge the helper makes for bridged VMs.
func checkBridge(ctx context.Context, h *doctorHost) doctorRow {
	b, err := h.bridge(bridgeName)
	switch {
	case err != nil:
		return rowWarn(err.Error(), "check the host's network links (ip link show "+bridgeName+")")
	case b == nil:
		return rowSkip("no " + bridgeName + ": no bridged VMs yet")
	case b.Kind != "bridge":
		return rowFail(bridgeName+" is a "+b.Kind+", not a bridge", "sudo ip link delete "+bridgeName+" (the helper makes the bridge again)")
	case !b.Up:
		return rowWarn(bridgeName+" is down", "sudo ip link set "+bridgeName+" up")
	case len(b.Addrs) == 0:
		return rowWarn(bridgeName+" is up without an IPv4 address: guests have no gateway", "stop and start a bridged VM (the helper gives the bridge its address)")
	}
	return rowOK(bridgeName + " up, " + strings.Join(b.Addrs, ", "))
}

// natInfo is banger's nftables table, as the doctor reads it.
type natInfo struct {
	Rules []string // the comments of the postrouting chain's rules
}

// readNAT reads table ip banger; it needs CAP_NET_ADMIN, so root.
func readNAT() (*natInfo, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name != natTableName {
			continue
		}
		n := &natInfo{}
		rules, err := c.GetRules(t, &nftables.Chain{Name: natChainName, Table: t})
		if err != nil {
			return n, nil // a table without its chain: no rules
		}
		for _, r := range rules {
			s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			n.Rules = append(n.Rules, s)
		}
		return n, nil
	}
	return nil, nil
}

// checkNAT reads banger's masquerade rules, which let bridged guests
// reach out, and IPv4 forwarding.
func checkNAT(ctx context.Context, h *doctorHost) doctorRow {
	if h.uid != 0 {
		return rowSkip("reading nftables needs root (sudo banger doctor)")
	}
	n, err := h.nat()
	if err != nil {
		return rowWarn(err.Error(), "check that the kernel has nftables (modprobe nf_tables)")
	}
	if n == nil {
		if b, _ := h.bridge(bridgeName); b != nil {
			return rowWarn("no nftables table ip "+natTableName+": bridged guests cannot reach out", "stop and start a bridged VM (the helper adds the rule)")
		}
		return rowSkip("no nftables table ip " + natTableName + ": no bridged VMs yet")
	}
	detail := fmt.Sprintf("table ip %s: %d masquerade rule(s)", natTableName, len(n.Rules))
	if len(n.Rules) > 0 {
		detail += " (" + strings.Join(n.Rules, "; ") + ")"
	}
	if b, err := os.ReadFile(h.ipForward); err == nil && strings.TrimSpace(string(b)) != "1" {
		return rowWarn(detail+"; IPv4 forwarding is off: bridged guests cannot reach out", "sudo sysctl -w net.ipv4.ip_forward=1")
	}
	return rowOK(detail)
}
