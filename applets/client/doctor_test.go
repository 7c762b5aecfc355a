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
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
	"banger/internal/doctor"
	"banger/internal/doctor/doctortest"
	"banger/internal/layout"
	"banger/internal/privapi"
	"banger/packaging"
	"banger/rpc"
)

// testHost is a doctor's view of nothing: no daemon, no install, no
// applets to run; each test gives it what it checks.
func testHost(t *testing.T) *doctorHost {
	t.Helper()
	dir := t.TempDir()
	return &doctorHost{
		client:  &rpc.Client{Socket: filepath.Join(dir, "run", "bangerd.sock")},
		build:   api.Build{Version: "test"},
		applets: []string{"banger", "bangerd", "bangerd-root"},
		self:    filepath.Join(dir, "bin", "banger"),
		uid:     os.Getuid(),
		socket:  filepath.Join(dir, "run", "bangerd.sock"),
		sys:     packaging.System{Root: filepath.Join(dir, "root")},
		runDoctor: func(context.Context, string, ...string) ([]api.DoctorRow, error) {
			return nil, errors.New("no applets in a unit test")
		},
	}
}

// row runs the named check of the table on h.
func row(t *testing.T, h *doctorHost, name string) api.DoctorRow {
	return doctortest.Row(t, h, doctorChecks(), name)
}

func TestDoctorChecksHaveNamesOnce(t *testing.T) { doctortest.UniqueNames(t, doctorChecks()) }

// Only a failed row makes the report not ok; warn and skip do not.
func TestRunDoctorAndItsTable(t *testing.T) {
	mk := func(status string) func(context.Context, *doctorHost) api.DoctorRow {
		return func(context.Context, *doctorHost) api.DoctorRow {
			return api.DoctorRow{Status: status, Detail: status + " detail", Fix: "fix " + status}
		}
	}
	type check = doctor.Check[*doctorHost]
	rep := runDoctor(context.Background(), testHost(t), []check{{Name: "a", Run: mk(api.DoctorOK)}, {Name: "b", Run: mk(api.DoctorWarn)}, {Name: "c", Run: mk(api.DoctorSkip)}})
	if !rep.OK || len(rep.Rows) != 3 || rep.Rows[1].Name != "b" {
		t.Errorf("ok, warn, skip: %+v", rep)
	}
	rep = runDoctor(context.Background(), testHost(t), []check{{Name: "a", Run: mk(api.DoctorOK)}, {Name: "b", Run: mk(api.DoctorFail)}})
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

// fakeDaemon serves ping, version, host.check, host.accel, host.doctor and
// image.show on sock (and holds its stream socket), as a daemon of
// version "test".
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
			return api.HostCheckResult{HelperMode: "socket", HelperPath: "/run/x.sock", Helper: privapi.PingResult{Version: "test"}}, hostErr
		}),
		api.MethodHostAccel: rpc.Handle(func(context.Context, rpc.NoParams) (api.HostAccelResult, error) {
			return api.HostAccelResult{Configured: "auto", Accel: "tcg", Usable: true, Reason: "KVM cannot run guests here: fake"}, nil
		}),
		api.MethodHostDoctor: rpc.Handle(func(context.Context, rpc.NoParams) (api.DoctorResult, error) {
			return api.DoctorResult{Rows: []api.DoctorRow{{Name: "kernel", Status: api.DoctorFail, Code: "kernel_missing", Detail: "no kernel in /boot", Fix: "apt-get install linux-image-amd64"}}}, nil
		}),
		api.MethodImageShow: rpc.Handle(func(_ context.Context, p api.VMRef) (api.Image, error) {
			return api.Image{}, rpc.Errorf(rpc.CodeNotFound, "no image %s", p.Name)
		}),
	}
	doctortest.Daemon(t, sock, methods)
}

func TestDaemonRows(t *testing.T) {
	// Not running: a user daemon is started on demand (warn); the system
	// install's must run (fail). Nothing is started either way.
	h := testHost(t)
	doctortest.Want(t, row(t, h, "daemon"), api.DoctorWarn, "not running on "+h.socket)
	doctortest.Want(t, row(t, h, "daemon sockets"), api.DoctorSkip, "not running")
	doctortest.Want(t, row(t, h, "helper"), api.DoctorSkip, "not running")
	if _, err := os.Stat(h.socket); err == nil {
		t.Error("the doctor started a daemon")
	}
	h = testHost(t)
	h.system = true
	doctortest.Want(t, row(t, h, "daemon"), api.DoctorFail, "the system install's")
	if r := row(t, h, "daemon"); !strings.Contains(r.Fix, "systemctl start bangerd.service") {
		t.Errorf("system fix: %q", r.Fix)
	}

	h = testHost(t)
	fakeDaemon(t, h.socket, nil)
	doctortest.Want(t, row(t, h, "daemon"), api.DoctorOK, "bangerd test, pid")
	doctortest.Want(t, row(t, h, "daemon sockets"), api.DoctorOK, "bangerd.sock and bangerd-stream.sock 0600, directory 0700")
	doctortest.Want(t, row(t, h, "helper"), api.DoctorOK, "mode socket (/run/x.sock), bangerd-root test")
	doctortest.Want(t, row(t, h, "kernel"), api.DoctorFail, "no kernel") // the daemon's row (host.doctor)

	h.d, h.build = nil, api.Build{Version: "newer"}
	doctortest.Want(t, row(t, h, "daemon"), api.DoctorWarn, "this client is newer")
	doctortest.Want(t, row(t, h, "helper"), api.DoctorWarn, "this client is newer")

	if err := os.Chmod(h.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(h.socket), 0o755); err != nil {
		t.Fatal(err)
	}
	r := row(t, h, "daemon sockets")
	doctortest.Want(t, r, api.DoctorFail, "bangerd.sock has mode 0666, want 0600")
	doctortest.Want(t, r, api.DoctorFail, "has mode 0755, want 0700")

	h = testHost(t)
	fakeDaemon(t, h.socket, rpc.Errorf(rpc.CodeUnavailable, "root helper unreachable"))
	doctortest.Want(t, row(t, h, "helper"), api.DoctorWarn, "root helper unreachable")
	h.d, h.system = nil, true
	doctortest.Want(t, row(t, h, "helper"), api.DoctorFail, "root helper unreachable")
}

func TestCheckLinks(t *testing.T) {
	h := testHost(t)
	doctortest.WriteFile(t, h.self, "binary", 0o755)
	doctortest.Want(t, row(t, h, "applet links"), api.DoctorWarn, "missing in "+filepath.Dir(h.self)+": bangerd, bangerd-root")
	if err := packaging.InstallLinks(filepath.Dir(h.self), h.self, h.applets); err != nil {
		t.Fatal(err)
	}
	doctortest.Want(t, row(t, h, "applet links"), api.DoctorOK, "3 applets linked")
	other := filepath.Join(t.TempDir(), "other")
	doctortest.WriteFile(t, other, "another binary", 0o755)
	link := filepath.Join(filepath.Dir(h.self), "bangerd")
	os.Remove(link)
	if err := os.Symlink(other, link); err != nil {
		t.Fatal(err)
	}
	doctortest.Want(t, row(t, h, "applet links"), api.DoctorFail, "bangerd (points at another file)")
}

// installUnder writes a system install for cfg under h's root, as
// `banger system install` would (without visudo or systemd).
func installUnder(t *testing.T, h *doctorHost, cfg packaging.Config) {
	t.Helper()
	doctortest.WriteFile(t, h.sys.Path(layout.SystemConfig), fmt.Sprintf("owner = %q\nuid = %d\ngid = %d\nprefix = %q\nhelper = %q\n",
		cfg.Owner, cfg.UID, cfg.GID, cfg.Prefix, cfg.Helper), 0o644)
	bin := h.sys.Path(cfg.Binary())
	doctortest.WriteFile(t, bin, "binary", 0o755)
	if err := packaging.InstallLinks(filepath.Dir(bin), bin, h.applets); err != nil {
		t.Fatal(err)
	}
	files, err := packaging.Render(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for p, b := range files {
		mode := os.FileMode(0o644)
		if p == layout.SystemSudoers {
			mode = 0o440
		}
		doctortest.WriteFile(t, h.sys.Path(p), string(b), mode)
	}
	h.readConfig()
}

func TestSystemInstallRows(t *testing.T) {
	h := testHost(t)
	for _, name := range []string{"system install", "unit bangerd.service", "unit bangerd-root.service", "sudoers"} {
		doctortest.Want(t, row(t, h, name), api.DoctorSkip, "")
	}

	cfg := packaging.Config{Owner: "alice", UID: 4242, GID: 4242, Prefix: "/usr/local", Helper: packaging.HelperService}
	installUnder(t, h, cfg)
	doctortest.Want(t, row(t, h, "system install"), api.DoctorOK, "owner alice (uid 4242), prefix /usr/local, helper service")
	doctortest.Want(t, row(t, h, "unit bangerd-root.service"), api.DoctorOK, "NoNewPrivileges=yes, ProtectSystem=strict, ProtectHome=yes, PrivateTmp=yes")
	doctortest.Want(t, row(t, h, "unit bangerd-root.service"), api.DoctorOK, "CapabilityBoundingSet=CAP_NET_ADMIN CAP_CHOWN")
	doctortest.Want(t, row(t, h, "unit bangerd.service"), api.DoctorOK, "NoNewPrivileges=yes")
	doctortest.Want(t, row(t, h, "sudoers"), api.DoctorSkip, "no sudoers rule")
	// The helper service's socket must be there in service mode.
	doctortest.Want(t, row(t, h, "helper socket"), api.DoctorFail, "the helper service is not running")

	unit := h.sys.Path(path.Join(layout.SystemUnitDir, layout.HelperUnit))
	b, _ := os.ReadFile(unit)
	doctortest.WriteFile(t, unit, strings.Replace(string(b), "NoNewPrivileges=yes\n", "", 1), 0o644)
	doctortest.Want(t, row(t, h, "unit bangerd-root.service"), api.DoctorFail, "lacks NoNewPrivileges=yes")
	doctortest.WriteFile(t, unit, string(b)+"# edited\n", 0o644)
	doctortest.Want(t, row(t, h, "unit bangerd-root.service"), api.DoctorWarn, "differs")
	os.Remove(unit)
	doctortest.Want(t, row(t, h, "unit bangerd-root.service"), api.DoctorFail, "no such file")
	if r := row(t, h, "unit bangerd-root.service"); r.Fix != "sudo banger system install --owner alice --prefix /usr/local --helper service" {
		t.Errorf("fix: %q", r.Fix)
	}

	os.Remove(filepath.Join(h.sys.Path(cfg.BinDir()), "bangerd-root"))
	doctortest.Want(t, row(t, h, "system install"), api.DoctorFail, "bangerd-root missing")

	// Sudo mode: no helper unit, a sudoers rule root's and 0440.
	h = testHost(t)
	cfg.Helper = packaging.HelperSudo
	installUnder(t, h, cfg)
	doctortest.Want(t, row(t, h, "unit bangerd-root.service"), api.DoctorSkip, "helper mode sudo")
	doctortest.Want(t, row(t, h, "unit bangerd.service"), api.DoctorOK, "ProtectHome=read-only, PrivateTmp=yes")
	doctortest.Want(t, row(t, h, "helper socket"), api.DoctorSkip, "user mode or sudo mode")
	sudoers := h.sys.Path(layout.SystemSudoers)
	if os.Getuid() == 0 {
		doctortest.Want(t, row(t, h, "sudoers"), api.DoctorOK, "0440, root's, as rendered for alice")
	} else {
		doctortest.Want(t, row(t, h, "sudoers"), api.DoctorFail, "want 0")
	}
	os.Chmod(sudoers, 0o644)
	doctortest.Want(t, row(t, h, "sudoers"), api.DoctorFail, "has mode 0644, want 0440")

	// A broken install.toml fails.
	doctortest.WriteFile(t, h.sys.Path(layout.SystemConfig), "owner = [", 0o644)
	h.cfg = nil
	h.readConfig()
	doctortest.Want(t, row(t, h, "system install"), api.DoctorFail, "install.toml")
}

// The helper service's socket: the owner's, 0600, in root's 0711
// directory (root can give files away, so this part runs as root).
func TestHelperSocketRow(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("chown to the owner needs root")
	}
	h := testHost(t)
	installUnder(t, h, packaging.Config{Owner: "alice", UID: 4242, GID: 4242, Prefix: "/usr/local", Helper: packaging.HelperService})
	sock := h.sys.Path(layout.SystemHelperSocket)
	if err := os.MkdirAll(filepath.Dir(sock), 0o711); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Dir(sock), 0o711)
	ln, err := rpc.Listen(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	doctortest.Want(t, row(t, h, "helper socket"), api.DoctorFail, "is owned by uid 0, want 4242")
	if err := os.Chown(sock, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	doctortest.Want(t, row(t, h, "helper socket"), api.DoctorOK, "0600, uid 4242, the owner alice; directory root's, 0711")
}

// The client uses the system daemon only for its owner (or root), and
// only when its socket is there.
func TestSystemSocket(t *testing.T) {
	sys := packaging.System{Root: t.TempDir()}
	if _, _, ok := systemSocket(sys, 4242); ok {
		t.Error("no install.toml: system socket used")
	}
	doctortest.WriteFile(t, sys.Path(layout.SystemConfig), "owner = \"alice\"\nuid = 4242\ngid = 4242\nprefix = \"/usr/local\"\nhelper = \"service\"\n", 0o644)
	if _, _, ok := systemSocket(sys, 4242); ok {
		t.Error("no socket: system socket used")
	}
	sock := sys.Path(layout.SystemDaemonSocket)
	doctortest.WriteFile(t, sock, "", 0o600)
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

// A target given --socket or BANGER_SOCKET keeps it, and starts its
// daemon as before; the system daemon is never started by the client.
func TestTargetSocketChoice(t *testing.T) {
	// A developer's own settings must not change the session's.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "BANGER_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	t.Setenv("BANGER_SOCKET", "/tmp/x/bangerd.sock")
	var s *target
	app := &cli.App{Name: "banger", Flags: globalFlags(), Action: func(c *cli.Context) error {
		var err error
		s, err = newTarget(c)
		return err
	}}
	if err := app.Run([]string{"banger"}); err != nil {
		t.Fatal(err)
	}
	if s == nil || s.socket != "/tmp/x/bangerd.sock" || s.system || !s.autostart {
		t.Errorf("BANGER_SOCKET: %+v", s)
	}
	sys := &target{socket: "/run/banger/bangerd.sock", system: true}
	err := sys.startDaemon(context.Background())
	if code, exit := classify(err); exit != ExitUnreachable || code != codeUnreachable || !strings.Contains(err.Error(), "systemctl start bangerd.service") {
		t.Errorf("starting the system daemon: %v (%s, %d)", err, code, exit)
	}
}

// The daemon's rows come from its host.doctor when it answers, else from
// `bangerd doctor` run as this user (told the socket, whether it is the
// system install's, and its owner); the helper's from `bangerd-root
// doctor`; and an applet whose checks did not run fails its rows.
func TestDoctorRowsComeFromTheApplets(t *testing.T) {
	var ran [][]string
	fakeApplets := func(h *doctorHost) {
		h.runDoctor = func(_ context.Context, applet string, args ...string) ([]api.DoctorRow, error) {
			ran = append(ran, append([]string{applet}, args...))
			if applet == api.AppletHelper {
				return nil, errors.New("exit status 2")
			}
			return []api.DoctorRow{{Name: "git", Status: api.DoctorOK, Detail: "from bangerd doctor"}}, nil
		}
	}
	h := testHost(t)
	fakeApplets(h)
	doctortest.Want(t, row(t, h, "git"), api.DoctorOK, "from bangerd doctor")
	doctortest.Want(t, row(t, h, "kernel"), api.DoctorFail, "the daemon's checks have no row kernel")
	doctortest.Want(t, row(t, h, "nat"), api.DoctorFail, "the helper's checks did not run: exit status 2")
	want := [][]string{{api.AppletDaemon, "--socket", h.socket}, {api.AppletHelper}}
	if fmt.Sprint(ran) != fmt.Sprint(want) {
		t.Errorf("ran %q, want %q (each once)", ran, want)
	}

	// The system install's daemon, not running: the checks know whose.
	ran = nil
	h = testHost(t)
	fakeApplets(h)
	h.system = true
	installUnder(t, h, packaging.Config{Owner: "alice", UID: 4242, GID: 4242, Prefix: "/usr/local", Helper: packaging.HelperService})
	row(t, h, "git")
	if want := []string{api.AppletDaemon, "--socket", h.socket, "--system", "--owner", "alice"}; len(ran) != 1 || fmt.Sprint(ran[0]) != fmt.Sprint(want) {
		t.Errorf("ran %q, want %q", ran, want)
	}

	// A daemon that answers host.doctor: its rows, no applet run for it.
	ran = nil
	h = testHost(t)
	fakeApplets(h)
	fakeDaemon(t, h.socket, nil)
	doctortest.Want(t, row(t, h, "kernel"), api.DoctorFail, "no kernel in /boot")
	if r := row(t, h, "kernel"); r.Code != "kernel_missing" {
		t.Errorf("the daemon's code: %q", r.Code)
	}
	if len(ran) != 0 {
		t.Errorf("ran %q for a daemon that answers", ran)
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
		"BANGER_SOCKET="+filepath.Join(runDir, "banger", layout.DaemonSocket))
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
			failed = failed || r.Status == api.DoctorFail
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
	if s := status(rep, "daemon"); s != api.DoctorWarn {
		t.Errorf("daemon: %s", s)
	}
	if s := status(rep, "applet links"); s != api.DoctorWarn {
		t.Errorf("applet links, none made: %s", s)
	}
	// The daemon's and the helper's checks ran, as processes of the binary.
	for _, r := range rep.Rows {
		if r.Code == "not_checked" {
			t.Errorf("a row not checked: %+v", r)
		}
	}
	if _, err := os.Stat(filepath.Join(runDir, "banger", "bangerd.sock")); err == nil {
		t.Error("doctor started the daemon")
	}

	// A foreign file where a link should be fails the row and the run.
	doctortest.WriteFile(t, filepath.Join(dir, "bangerd"), "not banger", 0o755)
	rep, code, _ = doctor("doctor", "--json")
	exitRule(rep, code)
	if s := status(rep, "applet links"); s != api.DoctorFail || code != ExitFailed || rep.OK {
		t.Errorf("a foreign link: row %s, exit %d, ok %v", s, code, rep.OK)
	}
	_, code, out := doctor("doctor")
	if code != ExitFailed || !strings.Contains(out, "fix: remove them, then banger links install "+dir) {
		t.Errorf("human output, exit %d:\n%s", code, out)
	}
}
