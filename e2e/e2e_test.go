package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
	"banger/rpc"
)

// nobody is the unprivileged uid the tests run a daemon or a caller as.
const nobody = 65534

// sandbox is one isolated user-mode banger: its own runtime and state
// directories, passed to every command through the environment.
type sandbox struct {
	t       testing.TB
	dir     string
	runtime string // XDG_RUNTIME_DIR
	state   string // XDG_STATE_HOME
	env     []string
}

func newSandbox(t testing.TB) *sandbox {
	t.Helper()
	if os.Getuid() != 0 {
		// They start a root helper and run daemons and callers as other
		// users, as a real install does.
		t.Skip("the end-to-end tests run as root (packaging/test.sh, CI)")
	}
	dir, err := os.MkdirTemp("", "bgt")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	s := &sandbox{t: t, dir: dir, runtime: filepath.Join(dir, "run"), state: filepath.Join(dir, "state")}
	for _, d := range []string{s.runtime, s.state} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	s.env = append(cleanEnv(), "XDG_RUNTIME_DIR="+s.runtime, "XDG_STATE_HOME="+s.state, "TMPDIR="+dir,
		// The host these tests assume, whatever machine runs them: guests
		// under TCG (a host whose /dev/kvm opens would test-boot KVM for
		// every sandbox, and one where it works would run them under
		// KVM; the accelerator tests choose for themselves), standbys
		// made whatever else uses the host's memory (the memory bound
		// is tested on its own), git without the user's config, and the
		// busybox image where a test names none (the Debian default is
		// built and tested by its own tests, debian_e2e_test.go).
		"BANGER_IMAGE="+api.TinyImage, "BANGER_ACCEL=tcg", "BANGER_STANDBY_MIN_FREE=64M", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
	t.Cleanup(func() {
		if t.Failed() {
			// What the daemon was doing, before the directory goes: what
			// went wrong first (CI keeps only a part of long output).
			t.Logf("the daemon's warnings:\n%s\nthe end of its log:\n%s", warnLines(s.daemonLog(), 40), lastLines(s.daemonLog(), 30))
		}
		s.stopDaemon()
		// VMs outlive their daemon by design: a failed test must not leave
		// its guests running.
		for _, pid := range s.allEnginePIDs() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		os.RemoveAll(dir)
	})
	return s
}

// lastLines is the last n lines of a file, or why there are none.
func lastLines(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// warnLines is the first n warning and error records of a log file.
func warnLines(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var warns []string
	for _, l := range strings.Split(string(data), "\n") {
		if len(warns) < n && (strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`)) {
			warns = append(warns, l)
		}
	}
	return strings.Join(warns, "\n")
}

// cleanEnv is the test's environment without banger's own variables, so a
// developer's settings cannot leak into a test.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BANGER_") && !strings.HasPrefix(kv, "XDG_") {
			env = append(env, kv)
		}
	}
	return env
}

func (s *sandbox) socket() string    { return filepath.Join(s.runtime, "banger", "bangerd.sock") }
func (s *sandbox) daemonLog() string { return filepath.Join(s.state, "banger", "bangerd.log") }

// result is what a finished command left.
type result struct {
	stdout, stderr string
	code           int
}

// banger runs the client with args and returns its output and exit code.
func (s *sandbox) banger(args ...string) result {
	s.t.Helper()
	return s.run(bangerBin, args...)
}

func (s *sandbox) run(bin string, args ...string) result {
	s.t.Helper()
	return s.runIn(nil, time.Minute, bin, args...)
}

// bangerAs runs the client as uid, as the owner of a daemon that runs as
// that user would.
func (s *sandbox) bangerAs(uid int, args ...string) result {
	s.t.Helper()
	return s.runAs(uid, nil, time.Minute, bangerBin, args...)
}

// runIn runs bin with stdin (nil: none), bounded by timeout, and returns
// its output and exit code.
func (s *sandbox) runIn(stdin []byte, timeout time.Duration, bin string, args ...string) result {
	s.t.Helper()
	return s.runAs(0, stdin, timeout, bin, args...)
}

func (s *sandbox) runAs(uid int, stdin []byte, timeout time.Duration, bin string, args ...string) result {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = s.env
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatalf("run %s %v: %v", bin, args, err)
	}
	return result{out.String(), errb.String(), code}
}

func (r result) want(t testing.TB, code int) result {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
	return r
}

func (r result) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, r.stdout)
	}
}

// stopDaemon stops a daemon of this sandbox if one runs.
func (s *sandbox) stopDaemon() {
	c := &rpc.Client{Socket: s.socket()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var res api.PingResult
	if c.Call(ctx, api.MethodPing, nil, &res) != nil {
		return
	}
	c.Call(ctx, api.MethodShutdown, nil, nil)
	waitFor(s.t, 15*time.Second, func() bool { return syscall.Kill(res.PID, 0) != nil })
}

// startProcess starts bin with args as a background child, optionally as
// another uid, and stops it (SIGTERM) when the test ends.
func (s *sandbox) startProcess(uid int, stderr *bytes.Buffer, bin string, args ...string) *exec.Cmd {
	s.t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = s.env
	cmd.Stderr = stderr
	// A child that outlives it must not hold Wait (and the test's
	// cleanup) on its stderr.
	cmd.WaitDelay = 5 * time.Second
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				// Killed, but Wait still waits for its stderr: a process
				// it left holds that pipe. Say so rather than hang.
				s.t.Errorf("%s %v: its stderr is still held open 15 s after it was killed", cmd.Path, cmd.Args[1:])
			}
		}
	})
	return cmd
}

// waitSocket waits until a server answers ping-or-anything on path.
func waitSocket(t testing.TB, path string) {
	t.Helper()
	// A server answered: ping, or an error of its own (a helper has no
	// "ping"). A connection that breaks unanswered is not one: it may be
	// a killed daemon's socket, still open while its last threads exit
	// (its main thread already a zombie).
	waitFor(t, 15*time.Second, func() bool {
		err := (&rpc.Client{Socket: path}).Call(context.Background(), "ping", nil, nil)
		var answer *rpc.ErrorResponse
		return err == nil || errors.As(err, &answer)
	})
}

func waitFor(t testing.TB, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var opIDAtEnd = regexp.MustCompile(`\((op-[0-9A-HJKMNP-TV-Z]{26})\)\n$`)

func TestDispatchByNameAndFirstArgument(t *testing.T) {
	s := newSandbox(t)
	if r := s.banger("bangerd", "--version").want(t, 0); !strings.HasPrefix(r.stdout, "bangerd version") {
		t.Errorf("banger bangerd --version: %q", r.stdout)
	}
	if r := s.banger("bangerd-root", "--version").want(t, 0); !strings.HasPrefix(r.stdout, "bangerd-root version") {
		t.Errorf("banger bangerd-root --version: %q", r.stdout)
	}
	if r := s.banger("--version").want(t, 0); !strings.HasPrefix(r.stdout, "banger version") {
		t.Errorf("banger --version: %q", r.stdout)
	}

	// Through links, the link's own name picks the applet.
	bin := filepath.Join(s.dir, "bin")
	os.Mkdir(bin, 0o755)
	s.banger("links", "install", bin).want(t, 0)
	if r := s.run(filepath.Join(bin, "bangerd"), "--version").want(t, 0); !strings.HasPrefix(r.stdout, "bangerd version") {
		t.Errorf("bangerd link: %q", r.stdout)
	}
	if r := s.run(filepath.Join(bin, "bangerd-root"), "--version").want(t, 0); !strings.HasPrefix(r.stdout, "bangerd-root version") {
		t.Errorf("bangerd-root link: %q", r.stdout)
	}
}

func TestLinksInstallAndCheck(t *testing.T) {
	s := newSandbox(t)
	bin := filepath.Join(s.dir, "bin")
	os.Mkdir(bin, 0o755)

	r := s.banger("links", "check", "--json", bin).want(t, 1)
	var sts []struct{ Applet, Path, State string }
	r.json(t, &sts)
	if len(sts) < 3 {
		t.Fatalf("links check lists %d applets: %s", len(sts), r.stdout)
	}
	for _, st := range sts {
		if st.State != "missing" {
			t.Errorf("%s: %s before install, want missing", st.Applet, st.State)
		}
	}

	s.banger("links", "install", bin).want(t, 0)
	r = s.banger("links", "check", "--json", bin).want(t, 0)
	r.json(t, &sts)
	for _, st := range sts {
		if st.State != "ok" {
			t.Errorf("%s: %s after install, want ok", st.Applet, st.State)
		}
	}
	// Installing again changes nothing and succeeds.
	s.banger("links", "install", bin).want(t, 0)

	// A foreign link is reported and replaced by install; a regular file
	// is reported and never replaced.
	os.Remove(filepath.Join(bin, "bangerd"))
	os.Symlink("/bin/true", filepath.Join(bin, "bangerd"))
	if r := s.banger("links", "check", bin).want(t, 1); !strings.Contains(r.stdout, "foreign") {
		t.Errorf("foreign link not reported:\n%s", r.stdout)
	}
	s.banger("links", "install", bin).want(t, 0)
	os.Remove(filepath.Join(bin, "bangerd-root"))
	os.WriteFile(filepath.Join(bin, "bangerd-root"), []byte("#!/bin/sh\n"), 0o755)
	s.banger("links", "check", bin).want(t, 1)
	if r := s.banger("links", "install", bin).want(t, 1); !strings.Contains(r.stderr, "not a link") {
		t.Errorf("install over a regular file: %s", r.stderr)
	}

	// Default directory: beside the binary.
	r = s.banger("links", "check", "--json")
	r.json(t, &sts)
	for _, st := range sts {
		if filepath.Dir(st.Path) != filepath.Dir(bangerBin) {
			t.Errorf("default link dir %s, want %s", filepath.Dir(st.Path), filepath.Dir(bangerBin))
		}
	}
}

func TestDaemonStartStatusStop(t *testing.T) {
	s := newSandbox(t)
	r := s.banger("daemon", "status").want(t, 3)
	if !strings.Contains(r.stderr, "not running") {
		t.Errorf("status of a stopped daemon: %q", r.stderr)
	}
	s.banger("--json", "daemon", "status").want(t, 3)

	r = s.banger("daemon", "start").want(t, 0)
	if !strings.Contains(r.stdout, "started") {
		t.Errorf("daemon start: %q", r.stdout)
	}
	r = s.banger("daemon", "start").want(t, 0)
	if !strings.Contains(r.stdout, "already running") {
		t.Errorf("second daemon start: %q", r.stdout)
	}
	var st struct {
		Running bool
		PID     int
		Socket  string
	}
	s.banger("daemon", "status", "--json").want(t, 0).json(t, &st)
	if !st.Running || st.PID == 0 || st.Socket != s.socket() {
		t.Errorf("status: %+v", st)
	}

	// The socket and its directory are private.
	assertMode(t, s.socket(), 0o600)
	assertMode(t, filepath.Dir(s.socket()), 0o700)

	// A second daemon on the same socket refuses, with the conflict code.
	r = s.banger("bangerd").want(t, 5)
	if !strings.Contains(r.stderr, "already serves") {
		t.Errorf("second bangerd: %q", r.stderr)
	}

	var ping api.PingResult
	s.banger("ping", "--json").want(t, 0).json(t, &ping)
	if ping.PID != st.PID || ping.Version == "" || ping.UptimeMS <= 0 {
		t.Errorf("ping: %+v", ping)
	}

	s.banger("daemon", "stop").want(t, 0)
	if _, err := os.Stat(s.socket()); !os.IsNotExist(err) {
		t.Errorf("socket left after stop: %v", err)
	}
	if syscall.Kill(st.PID, 0) == nil {
		t.Errorf("daemon pid %d still alive after stop", st.PID)
	}
	s.banger("daemon", "stop").want(t, 0) // stopping a stopped daemon is fine
	s.banger("daemon", "status").want(t, 3)
}

func TestAutostartAndNoAutostart(t *testing.T) {
	s := newSandbox(t)
	r := s.banger("--no-autostart", "ping").want(t, 3)
	if !strings.Contains(r.stderr, "not running") {
		t.Errorf("no-autostart ping: %q", r.stderr)
	}
	if _, err := os.Stat(s.socket()); !os.IsNotExist(err) {
		t.Fatalf("--no-autostart started a daemon")
	}
	s.banger("ping").want(t, 0)
	s.banger("--no-autostart", "ping").want(t, 0)
	// The daemon started itself detached: its log is in the state dir.
	if b, _ := os.ReadFile(s.daemonLog()); !bytes.Contains(b, []byte(`"msg":"daemon serving"`)) {
		t.Errorf("daemon log lacks its start record:\n%s", b)
	}
}

func TestDaemonStopsOnSIGTERM(t *testing.T) {
	s := newSandbox(t)
	var stderr bytes.Buffer
	cmd := s.startProcess(0, &stderr, bangerBin, "bangerd", "--helper", "none")
	waitSocket(t, s.socket())
	cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, 15*time.Second, func() bool { return cmd.ProcessState != nil || syscall.Kill(cmd.Process.Pid, 0) != nil })
	waitFor(t, 5*time.Second, func() bool { _, err := os.Stat(s.socket()); return os.IsNotExist(err) })
	if !strings.Contains(stderr.String(), `"reason":"signal"`) {
		t.Errorf("daemon did not log a signal stop:\n%s", stderr.String())
	}
}

func TestRuntimeDirFallbackRefusesForeignOrSymlink(t *testing.T) {
	s := newSandbox(t)
	// Without XDG_RUNTIME_DIR the daemon uses $TMPDIR/banger-UID.
	var env []string
	for _, kv := range s.env {
		if !strings.HasPrefix(kv, "XDG_RUNTIME_DIR=") {
			env = append(env, kv)
		}
	}
	s.env = env
	fallback := filepath.Join(s.dir, "banger-0")

	os.Symlink(s.state, fallback)
	r := s.banger("bangerd", "--helper", "none").want(t, 1)
	if !strings.Contains(r.stderr, "symlink") {
		t.Errorf("symlinked runtime dir: %q", r.stderr)
	}
	os.Remove(fallback)

	os.Mkdir(fallback, 0o755)
	os.Chown(fallback, nobody, nobody)
	r = s.banger("bangerd", "--helper", "none").want(t, 1)
	if !strings.Contains(r.stderr, "owned by uid") {
		t.Errorf("foreign runtime dir: %q", r.stderr)
	}
	os.Chown(fallback, 0, 0)

	// Ours but too open: made private.
	s.banger("daemon", "start").want(t, 0)
	assertMode(t, fallback, 0o700)
	if _, err := os.Stat(filepath.Join(fallback, "bangerd.sock")); err != nil {
		t.Errorf("fallback socket: %v", err)
	}
	s.banger("daemon", "stop").want(t, 0)
}

func TestUsageErrorsAndExitCodes(t *testing.T) {
	s := newSandbox(t)
	s.banger("no-such-command").want(t, 2)
	s.banger("ping", "--no-such-flag").want(t, 2)
	s.banger("trace").want(t, 2)
	r := s.banger("--json", "trace", "not-an-op-id").want(t, 2)
	var e struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || e.Error.Code != "usage" {
		t.Errorf("--json usage error on stderr: %q", r.stderr)
	}
	s.banger("--log-level", "loud", "ping").want(t, 2)
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s: mode %o, want %o", path, got, want)
	}
}
