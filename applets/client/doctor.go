package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
	"banger/internal/doctor"
	"banger/internal/layout"
	"banger/packaging"
	"banger/rpc"
)

// doctorAppletTimeout bounds an applet's doctor run as a process
// (bangerd doctor may ask a daemon that hangs, and runs tools).
const doctorAppletTimeout = 30 * time.Second

// doctorReport is `banger doctor --json`.
type doctorReport struct {
	OK   bool            `json:"ok"` // no row failed
	Rows []api.DoctorRow `json:"rows"`
}

// doctorChecks is every row, in the order they are shown: the client's
// own (its install, its daemon's sockets), and the daemon's and the
// helper's, which they check where the resource is (fromDaemon,
// fromHelper). Adding one is adding a line.
func doctorChecks() []doctor.Check[*doctorHost] {
	return []doctor.Check[*doctorHost]{
		daemonRow("qemu-system-x86_64"),
		daemonRow("qemu-img"),
		daemonRow("accelerator"),
		daemonRow("kernel"),
		daemonRow("busybox"),
		daemonRow("mkfs.ext4"),
		daemonRow("git"),
		{Name: "daemon", Run: checkDaemon},
		{Name: "daemon sockets", Run: checkDaemonSockets},
		daemonRow("standby"),
		{Name: "helper", Run: checkHelper},
		{Name: "helper socket", Run: checkHelperSocket},
		{Name: "applet links", Run: checkLinks},
		{Name: "system install", Run: checkInstall},
		{Name: "unit " + layout.DaemonUnit, Run: checkUnit(layout.DaemonUnit)},
		{Name: "unit " + layout.HelperUnit, Run: checkUnit(layout.HelperUnit)},
		{Name: "sudoers", Run: checkSudoers},
		helperRow("bridge " + api.DefaultBridge),
		helperRow("taps"),
		helperRow("nat"),
	}
}

func newDoctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check what banger needs on this host, each row with its fix (exit 1 when a check fails; starts nothing)",
		Flags: []cli.Flag{jsonFlag()},
		Action: action(func(c *cli.Context, s *target) error {
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

func runDoctor(ctx context.Context, h *doctorHost, checks []doctor.Check[*doctorHost]) doctorReport {
	rep := doctorReport{OK: true, Rows: doctor.Run(ctx, h, checks)}
	for _, r := range rep.Rows {
		rep.OK = rep.OK && r.Status != api.DoctorFail
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
		count[api.DoctorOK], count[api.DoctorWarn], count[api.DoctorFail], count[api.DoctorSkip])
}

// daemonRow is the row called name that the daemon makes (daemonRows).
func daemonRow(name string) doctor.Check[*doctorHost] {
	return doctor.Check[*doctorHost]{Name: name, Run: func(ctx context.Context, h *doctorHost) api.DoctorRow {
		rows, err := h.daemonRows(ctx)
		return pick(rows, err, name, "the daemon's", api.AppletDaemon)
	}}
}

// helperRow is the row called name that the helper makes (helperRows).
func helperRow(name string) doctor.Check[*doctorHost] {
	return doctor.Check[*doctorHost]{Name: name, Run: func(ctx context.Context, h *doctorHost) api.DoctorRow {
		rows, err := h.helperRows(ctx)
		return pick(rows, err, name, "the helper's", api.AppletHelper)
	}}
}

// pick is the row called name of rows that whose checks (applet's
// doctor) made.
func pick(rows []api.DoctorRow, err error, name, whose, applet string) api.DoctorRow {
	fix := "run banger " + applet + " doctor to see why"
	if err != nil {
		return doctor.Fail("not_checked", whose+" checks did not run: "+err.Error(), fix)
	}
	if r, ok := doctor.Find(rows, name); ok {
		return r
	}
	return doctor.Fail("not_checked", whose+" checks have no row "+name, fix)
}

// doctorHost is what the checks look at: the machine, or fakes in tests.
type doctorHost struct {
	build   api.Build
	applets []string
	self    string // this binary
	uid     int
	socket  string // the daemon's, as the target chose it
	system  bool   // socket is the system install's daemon
	client  *rpc.Client

	sys packaging.System // install.toml, units, sudoers, helper socket
	// runDoctor runs an applet's doctor (bangerd doctor, bangerd-root
	// doctor) as a process of this binary, and returns its rows.
	runDoctor func(ctx context.Context, applet string, args ...string) ([]api.DoctorRow, error)

	cfg    *packaging.Config // install.toml, read once; nil when absent
	cfgErr error             // install.toml is there but cannot be read
	d      *daemonView       // asked once, on first use
	helper *appletRows       // run once, on first use
}

// appletRows are the rows an applet's checks made, or why there are none.
type appletRows struct {
	rows []api.DoctorRow
	err  error
}

func newDoctorHost(s *target, env Env, self string) *doctorHost {
	h := &doctorHost{
		build: env.Build, applets: env.Applets, self: self, uid: os.Getuid(),
		socket: s.socket, system: s.system, client: s.client(),
		sys:       packaging.System{Root: "/", Applets: env.Applets},
		runDoctor: runAppletDoctor,
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
	ping    *api.PingResult
	pingErr error
	version *api.VersionResult
	host    *api.HostCheckResult
	hostErr error
	checks  *appletRows // host.doctor, or bangerd doctor
}

func (h *doctorHost) daemon(ctx context.Context) *daemonView {
	if h.d != nil {
		return h.d
	}
	d := &daemonView{}
	h.d = d
	ping, err := h.within(doctor.CallTimeout).Ping(ctx)
	if d.pingErr = err; err != nil {
		return d
	}
	d.ping = &ping
	if v, err := h.within(doctor.CallTimeout).Version(ctx); err == nil {
		d.version = &v
	}
	hc, err := h.within(doctor.SlowCallTimeout).HostCheck(ctx)
	if d.hostErr = err; err == nil {
		d.host = &hc
	}
	return d
}

// within is the daemon's typed client whose calls each end after
// timeout: the doctor must answer, also when the daemon hangs.
func (h *doctorHost) within(timeout time.Duration) api.Client {
	return api.Client{Caller: rpc.CallerFunc(func(ctx context.Context, method string, params, result any) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return h.client.Call(ctx, method, params, result)
	})}
}

// daemonRows are the daemon's checks: its answer to host.doctor, or,
// when none answers (not running, or older), the same checks run as
// this user by `bangerd doctor`, which asks that daemon what it can.
func (h *doctorHost) daemonRows(ctx context.Context) ([]api.DoctorRow, error) {
	d := h.daemon(ctx)
	if d.checks == nil {
		d.checks = &appletRows{}
		if res, ok := h.hostDoctor(ctx, d); ok {
			d.checks.rows = res.Rows
		} else {
			args := []string{"--socket", h.socket}
			if h.system {
				args = append(args, "--system")
			}
			if h.cfg != nil {
				args = append(args, "--owner", h.cfg.Owner)
			}
			d.checks.rows, d.checks.err = h.runDoctor(ctx, api.AppletDaemon, args...)
		}
	}
	return d.checks.rows, d.checks.err
}

// hostDoctor is the running daemon's answer to host.doctor, if it gives
// one (an older daemon has no such call).
func (h *doctorHost) hostDoctor(ctx context.Context, d *daemonView) (api.DoctorResult, bool) {
	if d.ping == nil {
		return api.DoctorResult{}, false
	}
	res, err := h.within(doctor.SlowCallTimeout).HostDoctor(ctx)
	return res, err == nil
}

// helperRows are the helper's checks, run as this user by `bangerd-root
// doctor`.
func (h *doctorHost) helperRows(ctx context.Context) ([]api.DoctorRow, error) {
	if h.helper == nil {
		h.helper = &appletRows{}
		h.helper.rows, h.helper.err = h.runDoctor(ctx, api.AppletHelper)
	}
	return h.helper.rows, h.helper.err
}

// runAppletDoctor runs `APPLET doctor ARGS` from this very binary
// (/proc/self/exe, as the client starts its daemon) and reads its rows.
func runAppletDoctor(ctx context.Context, applet string, args ...string) ([]api.DoctorRow, error) {
	ctx, cancel := context.WithTimeout(ctx, doctorAppletTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args = append([]string{applet, "doctor"}, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s doctor: %w: %s", applet, err, strings.TrimSpace(stderr.String()))
	}
	var res api.DoctorResult
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, fmt.Errorf("%s doctor: %w", applet, err)
	}
	return res.Rows, nil
}

// startFix says how to start the daemon the client talks to.
func (h *doctorHost) startFix() string {
	if h.system {
		return "sudo systemctl start " + layout.DaemonUnit + " (journalctl -u " + layout.DaemonUnit + ")"
	}
	return "banger daemon start (commands that need it also start it)"
}

// restartFix says how to restart that daemon.
func (h *doctorHost) restartFix() string { return packaging.RestartDaemon(h.system) }

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
		return "sudo systemctl restart " + layout.HelperUnit + " (journalctl -u " + layout.HelperUnit + ")"
	}
	return h.reinstallFix()
}

// checkDaemon asks the daemon for its version; it never starts one.
func checkDaemon(ctx context.Context, h *doctorHost) api.DoctorRow {
	d := h.daemon(ctx)
	where := h.socket
	if h.system {
		where += " (the system install's)"
	}
	switch {
	case errors.Is(d.pingErr, rpc.ErrUnreachable) && h.system:
		return doctor.Fail("daemon_down", "not answering on "+where, h.startFix())
	case errors.Is(d.pingErr, rpc.ErrUnreachable):
		return doctor.Warn("daemon_down", "not running on "+where, h.startFix())
	case d.pingErr != nil:
		return doctor.Fail("daemon_error", fmt.Sprintf("on %s: %v", where, d.pingErr), h.restartFix())
	}
	detail := fmt.Sprintf("bangerd %s, pid %d, up %s, on %s", d.ping.Version, d.ping.PID, fmtUptime(d.ping.UptimeMS), where)
	switch {
	case d.version != nil && d.version.Protocol != rpc.Version:
		return doctor.Fail("protocol_mismatch", fmt.Sprintf("%s: speaks protocol %d, this client %d", detail, d.version.Protocol, rpc.Version), h.restartFix())
	case d.ping.Version != h.build.String():
		return doctor.Warn("version_mismatch", fmt.Sprintf("%s; this client is %s", detail, h.build), h.restartFix()+" (to run this version)")
	}
	return doctor.OK(detail)
}

// checkDaemonSockets checks the daemon's sockets and their directory:
// the owner's alone (sockets 0600, directory 0700).
func checkDaemonSockets(ctx context.Context, h *doctorHost) api.DoctorRow {
	if _, err := os.Lstat(h.socket); errors.Is(err, os.ErrNotExist) && h.daemon(ctx).ping == nil {
		return doctor.Skip("no socket at " + h.socket + " (the daemon is not running)")
	}
	owner := h.uid
	if h.system && h.cfg != nil {
		owner = h.cfg.UID
	}
	var bad []string
	bad = append(bad, fileProblems(filepath.Dir(h.socket), fs.ModeDir, 0o700, owner)...)
	bad = append(bad, fileProblems(h.socket, fs.ModeSocket, 0o600, owner)...)
	bad = append(bad, fileProblems(layout.StreamSocket(h.socket), fs.ModeSocket, 0o600, owner)...)
	if len(bad) > 0 {
		return doctor.Fail("socket_perms", strings.Join(bad, "; "), "remove what is not the daemon's, then "+h.restartFix()+" (it makes its directory 0700 and its sockets 0600)")
	}
	return doctor.OK(fmt.Sprintf("%s and %s 0600, directory 0700, uid %d", filepath.Base(h.socket), filepath.Base(layout.StreamSocket(h.socket)), owner))
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
func checkHelper(ctx context.Context, h *doctorHost) api.DoctorRow {
	d := h.daemon(ctx)
	switch {
	case d.ping == nil:
		return doctor.Skip("asked through the daemon (host.check), which is not running")
	case d.hostErr != nil && h.system:
		return doctor.Fail("helper_unreachable", "the daemon cannot reach it: "+d.hostErr.Error(), h.helperFix())
	case d.hostErr != nil:
		return doctor.Warn("helper_unreachable", "the daemon cannot reach it ("+d.hostErr.Error()+"); bridged networking needs it",
			"sudo banger system install --owner $USER (a helper service), or a sudoers rule for the daemon's sudo mode (--helper sudo)")
	}
	hc := d.host
	detail := fmt.Sprintf("mode %s (%s), bangerd-root %s, euid %d", hc.HelperMode, hc.HelperPath, hc.Helper.Version, hc.Helper.EUID)
	switch {
	case hc.Helper.EUID != 0:
		return doctor.Fail("helper_not_root", detail+": the helper does not run as root", h.helperFix())
	case hc.Helper.Version != h.build.String():
		return doctor.Warn("version_mismatch", detail+"; this client is "+h.build.String(), h.helperFix()+" (to run this version)")
	}
	return doctor.OK(detail)
}

// checkHelperSocket checks the helper service's socket: the owner's,
// 0600, in a directory of root's that others may only pass (0711).
func checkHelperSocket(ctx context.Context, h *doctorHost) api.DoctorRow {
	sock := h.sys.Path(layout.SystemHelperSocket)
	service := h.cfg != nil && h.cfg.Helper == packaging.HelperService
	if _, err := os.Lstat(sock); errors.Is(err, os.ErrNotExist) {
		if service {
			return doctor.Fail("helper_down", "no socket at "+layout.SystemHelperSocket+": the helper service is not running", "sudo systemctl start "+layout.HelperUnit+" (journalctl -u "+layout.HelperUnit+")")
		}
		return doctor.Skip("no helper service socket at " + layout.SystemHelperSocket + " (user mode or sudo mode)")
	}
	fi, err := os.Lstat(sock)
	if err != nil {
		return doctor.Fail("socket_unreadable", err.Error(), "")
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
		return doctor.Fail("socket_perms", strings.Join(bad, "; "), "sudo systemctl restart "+layout.HelperUnit+" (it makes the socket the owner's, 0600)")
	}
	return doctor.OK(fmt.Sprintf("%s 0600, %s; directory root's, 0711", layout.SystemHelperSocket, owner))
}

// checkLinks checks the applet links beside this binary. A missing one
// only warns (the client starts the daemon through /proc/self/exe); one
// that runs another binary fails.
func checkLinks(ctx context.Context, h *doctorHost) api.DoctorRow {
	dir := filepath.Dir(h.self)
	sts, err := packaging.CheckLinks(dir, h.self, h.applets)
	if err != nil {
		return doctor.Fail("links_unreadable", err.Error(), "")
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
		return doctor.Fail("links_foreign", "in "+dir+", not this binary: "+strings.Join(foreign, ", "), "remove them, then "+fix)
	case len(missing) > 0:
		return doctor.Warn("links_missing", "missing in "+dir+": "+strings.Join(missing, ", "), fix)
	}
	return doctor.OK(fmt.Sprintf("%d applets linked to %s", len(sts), h.self))
}

// checkInstall reads install.toml and checks the installed binary and its
// links, which the units run.
func checkInstall(ctx context.Context, h *doctorHost) api.DoctorRow {
	switch {
	case h.cfgErr != nil:
		return doctor.Fail("install_unreadable", h.cfgErr.Error(), h.reinstallFix())
	case h.cfg == nil:
		return doctor.Skip("no " + layout.SystemConfig + ": user mode")
	}
	c := h.cfg
	detail := fmt.Sprintf("owner %s (uid %d), prefix %s, helper %s", c.Owner, c.UID, c.Prefix, c.Helper)
	if err := c.Validate(); err != nil {
		return doctor.Fail("install_invalid", layout.SystemConfig+": "+err.Error(), h.reinstallFix())
	}
	bin := h.sys.Path(c.Binary())
	if _, err := os.Stat(bin); err != nil {
		return doctor.Fail("install_binary_missing", detail+"; "+err.Error(), h.reinstallFix())
	}
	sts, err := packaging.CheckLinks(filepath.Dir(bin), bin, h.applets)
	if err != nil || !packaging.LinksOK(sts) {
		var bad []string
		for _, s := range sts {
			if s.State != packaging.LinkOK {
				bad = append(bad, s.Applet+" "+s.State)
			}
		}
		return doctor.Fail("install_links", detail+"; links beside "+c.Binary()+": "+strings.Join(bad, ", "), h.reinstallFix())
	}
	if h.uid != c.UID && h.uid != 0 {
		detail += fmt.Sprintf("; you (uid %d) are not the owner, so this client uses a daemon of your own", h.uid)
	}
	return doctor.OK(detail)
}

// checkUnit compares an installed unit with what this banger renders for
// install.toml: every hardening line of the rendering must be there. The
// rendering decides which apply: the daemon's unit in sudo mode has no
// NoNewPrivileges (sudo must gain root) and neither unit of the daemon
// bounds capabilities.
func checkUnit(unit string) func(context.Context, *doctorHost) api.DoctorRow {
	hardening := []string{"NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "CapabilityBoundingSet"}
	return func(ctx context.Context, h *doctorHost) api.DoctorRow {
		if h.cfg == nil {
			return doctor.Skip("no system install")
		}
		p := path.Join(layout.SystemUnitDir, unit)
		files, err := packaging.Render(*h.cfg)
		if err != nil {
			return doctor.Fail("unit_unrenderable", err.Error(), h.reinstallFix())
		}
		want, ok := files[p]
		if !ok {
			return doctor.Skip("helper mode " + h.cfg.Helper + " has no " + unit)
		}
		got, err := os.ReadFile(h.sys.Path(p))
		if err != nil {
			return doctor.Fail("unit_unreadable", err.Error(), h.reinstallFix())
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
			return doctor.Fail("unit_not_hardened", p+" lacks "+strings.Join(missing, ", "), h.reinstallFix())
		case !bytes.Equal(got, want):
			return doctor.Warn("unit_differs", p+" is hardened but differs from what this banger writes (an older install, or edited)", h.reinstallFix())
		}
		return doctor.OK(p + ": " + strings.Join(present, ", "))
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
func checkSudoers(ctx context.Context, h *doctorHost) api.DoctorRow {
	p := h.sys.Path(layout.SystemSudoers)
	_, err := os.Lstat(p)
	switch {
	case h.cfg == nil:
		return doctor.Skip("no system install")
	case h.cfg.Helper != packaging.HelperSudo && err == nil:
		return doctor.Warn("sudoers_leftover", layout.SystemSudoers+" is left from sudo mode; helper mode is "+h.cfg.Helper, h.reinstallFix()+" (removes it)")
	case h.cfg.Helper != packaging.HelperSudo:
		return doctor.Skip("helper mode " + h.cfg.Helper + ": no sudoers rule")
	case err != nil:
		return doctor.Fail("sudoers_unreadable", err.Error(), h.reinstallFix())
	}
	if bad := fileProblems(p, 0, 0o440, 0); len(bad) > 0 {
		return doctor.Fail("sudoers_perms", strings.Join(bad, "; "), h.reinstallFix())
	}
	files, err := packaging.Render(*h.cfg)
	got, rerr := os.ReadFile(p)
	if err != nil || rerr != nil || !bytes.Equal(got, files[layout.SystemSudoers]) {
		return doctor.Warn("sudoers_differs", layout.SystemSudoers+" (0440, root's) differs from the rule this banger writes", h.reinstallFix())
	}
	return doctor.OK(layout.SystemSudoers + " 0440, root's, as rendered for " + h.cfg.Owner)
}
