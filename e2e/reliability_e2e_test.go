package e2e_test

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"banger/internal/agentlink"
	"banger/internal/api"
	"banger/logging/logfile"
	"banger/rpc"
)

// Reliability on real guests, in real time: the warm path never fails a
// create that a boot would serve, standbys outlast idle hours, and a
// guest that ends on its own is noticed.

// linkIdle is how long the idle test leaves a standby alone: more than
// twice the longest wait on the agent link. A write there waits at most
// ConnectionWriteTimeout; yamux's default keepalive, which the link ran
// until it closed every standby idle for about a minute, gave up after
// KeepAliveInterval plus that.
func linkIdle() time.Duration {
	nop := zerolog.Nop()
	cfg := agentlink.MuxConfig(&nop)
	return 2*(yamux.DefaultConfig().KeepAliveInterval+cfg.ConnectionWriteTimeout) + 30*time.Second
}

// The scenario of a new user after lunch: a standby made, the daemon left
// idle, then a sandbox. It must start, warm, in the standby itself.
func TestStandbyOutlastsAnIdleDaemon(t *testing.T) {
	needGuests(t)
	t.Parallel()
	s := newSandbox(t)
	s.daemon()
	s.banger("vm", "run", "--rm", "--", "true").want(t, 0)
	s.waitStandbysReady(t, 1)
	standby := s.standbyPIDs()
	idle := linkIdle()
	t.Logf("leaving the standby (qemu %v) idle for %s", standby, idle)
	time.Sleep(idle)
	r := s.banger("vm", "run", "-d", "--name", "after-lunch").want(t, 0)
	wantStart(t, r, true)
	if strings.Contains(r.stderr, "fall back") {
		t.Errorf("the standby was not used:\n%s", r.stderr)
	}
	var vm api.VM
	s.banger("vm", "show", "--json", "after-lunch").want(t, 0).json(t, &vm)
	if len(standby) != 1 || vm.PID != standby[0] {
		t.Errorf("after-lunch runs in qemu %d, not in the idle standby %v", vm.PID, standby)
	}
	s.banger("vm", "exec", "after-lunch", "--", "true").want(t, 0)
	s.banger("vm", "delete", "after-lunch").want(t, 0)
	s.assertNothingLeft()
}

// Every way a warm start can break still gives a working sandbox: a
// standby that hangs or is killed, a snapshot memory file that is
// truncated or does not load, a snapshot another banger made.
func TestWarmFaultsFallBack(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	snapshot := filepath.Join(s.state, "banger", "snapshots", api.TinyImage)
	run := func() result {
		t.Helper()
		return s.banger("vm", "run", "--rm", "--", "true").want(t, 0)
	}
	run()
	s.waitStandbysReady(t, 1)

	// A standby that hangs (its QEMU stopped): the create gives up on it
	// at its check and restores the snapshot instead.
	hung := s.standbyPIDs()[0]
	syscall.Kill(hung, syscall.SIGSTOP)
	r := run()
	wantStart(t, r, true)
	if !strings.Contains(r.stderr, "take standby failed") || !strings.Contains(r.stderr, "fall back to restore done") || !strings.Contains(r.stderr, "restore done") {
		t.Errorf("a hung standby:\n%s", r.stderr)
	}
	syscall.Kill(hung, syscall.SIGCONT)
	waitFor(t, 10*time.Second, func() bool { return syscall.Kill(hung, 0) != nil || zombie(hung) })

	// A standby killed while it waits: the next create is warm, and a
	// new standby is made. Either the daemon saw the exit first and
	// replaced it, or the create took it first and its check failed.
	s.waitStandbysReady(t, 2)
	killed := s.standbyPIDs()[0]
	syscall.Kill(killed, syscall.SIGKILL)
	r = run()
	wantStart(t, r, true)
	replaced := func() bool {
		b, _ := os.ReadFile(s.daemonLog())
		return strings.Contains(string(b), "a standby's QEMU exited while it waited")
	}
	if !replaced() && !strings.Contains(r.stderr, "take standby failed in") {
		t.Errorf("a killed standby, neither replaced nor refused:\n%s", r.stderr)
	}
	s.waitStandbysReady(t, 3)

	// Without standbys, the snapshot itself: a truncated memory file is
	// not used (the VM boots and saves a new snapshot), and one that does
	// not load falls back to a boot.
	s.stopDaemon()
	env := s.env
	s.env = append(env, "BANGER_STANDBYS=0")
	s.daemon()
	if err := os.Truncate(filepath.Join(snapshot, "memory"), 4096); err != nil {
		t.Fatal(err)
	}
	r = run()
	wantStart(t, r, false)
	if !strings.Contains(r.stderr, "save warm snapshot done") {
		t.Errorf("no new snapshot after a truncated one:\n%s", r.stderr)
	}
	wantStart(t, run(), true)

	f, err := os.OpenFile(filepath.Join(snapshot, "memory"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("not QEMU's migration stream"), 0)
	f.Close()
	r = run()
	wantStart(t, r, false)
	// QEMU reads the state as it starts: the restore fails at its launch
	// or at its load, whichever QEMU gets to first.
	if !strings.Contains(r.stderr, "restore failed") && !strings.Contains(r.stderr, "launch failed") {
		t.Errorf("a snapshot that does not load: the restore did not fail:\n%s", r.stderr)
	}
	for _, want := range []string{"fall back to boot done", "wait for agent done", "save warm snapshot done"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("a snapshot that does not load: no %q:\n%s", want, r.stderr)
		}
	}
	wantStart(t, run(), true)

	// A snapshot another banger made (an upgrade): this one's daemon
	// boots, and then restores its own.
	s.stopDaemon()
	s.env = env
	other := filepath.Join(s.dir, "other", "banger")
	os.MkdirAll(filepath.Dir(other), 0o755)
	if b, err := os.ReadFile(bangerBin); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(other, append(b, 0), 0o755); err != nil { // another build: another sha256
		t.Fatal(err)
	}
	d := s.startProcess(0, &bytes.Buffer{}, other, "bangerd", "--helper", "none")
	waitSocket(t, s.socket())
	r = run()
	wantStart(t, r, false)
	wantStart(t, run(), true)
	// Its exit, not d.Wait: startProcess already waits for it, so a
	// second Wait returns at once, and the next daemon would start while
	// this one still holds the socket.
	d.Process.Signal(syscall.SIGTERM)
	waitFor(t, time.Minute, func() bool { return syscall.Kill(d.Process.Pid, 0) != nil })
	s.daemon()
	s.assertNothingLeft()
}

// zombie says whether pid is a zombie (a child of a daemon that died).
func zombie(pid int) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(stat), ") ")
	return strings.HasPrefix(rest, "Z")
}

// A guest that powers itself off is a stopped VM within seconds, its
// QEMU and published port gone; one whose agent (PID 1) dies is a failed
// VM, the panic in its last error.
func TestGuestEndsOnItsOwn(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	port := freePort(t)
	s.banger("vm", "create", "--name", "box", "--publish", strconv.Itoa(port)+":80").want(t, 0)
	pidOf := func() int {
		var vm api.VM
		s.banger("vm", "show", "--json", "box").want(t, 0).json(t, &vm)
		return vm.PID
	}
	stateOf := func() api.VM {
		var vm api.VM
		s.banger("vm", "show", "--json", "box").want(t, 0).json(t, &vm)
		return vm
	}
	pid := pidOf()
	s.banger("vm", "exec", "box", "--", "poweroff")
	start := time.Now()
	waitFor(t, 5*time.Second, func() bool { return stateOf().State == "stopped" })
	t.Logf("stopped %s after the guest's poweroff", time.Since(start))
	if syscall.Kill(pid, 0) == nil && !zombie(pid) {
		t.Errorf("qemu %d still runs", pid)
	}
	if vm := stateOf(); vm.PID != 0 || vm.LastError != "" {
		t.Errorf("after poweroff: %+v", vm)
	}
	if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port)); err != nil {
		t.Errorf("port %d still held after poweroff: %v", port, err)
	} else {
		l.Close()
	}

	s.banger("vm", "start", "box").want(t, 0)
	s.banger("vm", "exec", "box", "--", "kill", "-ABRT", "1")
	start = time.Now()
	waitFor(t, 5*time.Second, func() bool { return stateOf().State == "failed" })
	t.Logf("failed %s after PID 1 died", time.Since(start))
	if vm := stateOf(); !strings.Contains(vm.LastError, "Kernel panic") || !strings.Contains(vm.LastError, "Attempted to kill init") {
		t.Errorf("last error: %q", vm.LastError)
	}
	if r := s.banger("vm", "show", "box").want(t, 0); !strings.Contains(r.stdout, "Kernel panic") {
		t.Errorf("vm show:\n%s", r.stdout)
	}
	// It starts again.
	s.banger("vm", "start", "box").want(t, 0)
	s.banger("vm", "exec", "box", "--", "true").want(t, 0)
	s.banger("vm", "delete", "box").want(t, 0)
	s.assertNothingLeft()
}

// The daemon's log is rotated by size, and trace reads the rotated files:
// an op id whose records are only in one still leads to them.
func TestDaemonLogRotatesAndTraceReadsItAll(t *testing.T) {
	s := newSandbox(t)
	s.startProcess(0, &bytes.Buffer{}, bangerBin, "bangerd", "--helper", "none", "--log-level", "debug", "--log-max-size", "1", "--log-max-files", "2")
	waitSocket(t, s.socket())
	var re *rpc.ErrorResponse
	if err := s.call("no.such.method", nil, nil); !errors.As(err, &re) || re.OpID == "" {
		t.Fatalf("unknown method: %v", err)
	}
	// Each call is a record at debug level: a few thousand fill 1 MiB.
	for i := 0; len(logfile.Files(s.daemonLog())) < 3; i++ {
		if err := s.call(api.MethodPing, nil, nil); err != nil {
			t.Fatal(err)
		}
		if i > 100000 {
			t.Fatalf("no rotation after %d calls: %v", i, logfile.Files(s.daemonLog()))
		}
	}
	files := logfile.Files(s.daemonLog())
	for _, f := range files {
		if fi, err := os.Stat(f); err != nil || fi.Size() > 1<<20 {
			t.Errorf("%s: %v bytes, %v", f, fi.Size(), err)
		}
	}
	if live, _ := os.ReadFile(s.daemonLog()); bytes.Contains(live, []byte(re.OpID)) {
		t.Fatalf("the op id is still in the live log")
	}
	r := s.banger("trace", re.OpID).want(t, 0)
	if !strings.Contains(r.stdout, "unknown_method") {
		t.Errorf("trace of a rotated op id:\n%s", r.stdout)
	}
	// Three files at most: the live one and --log-max-files 2.
	for range 5000 {
		s.call(api.MethodPing, nil, nil)
	}
	// lumberjack removes the files past --log-max-files in the background.
	waitFor(t, 10*time.Second, func() bool { return len(logfile.Files(s.daemonLog())) <= 3 })
	if files := logfile.Files(s.daemonLog()); len(files) != 3 {
		t.Errorf("files kept: %v", files)
	}
}

// A standby is made only while the host has its memory to spare; image
// show and the doctor say when one was skipped, and why, and warm starts
// restore the snapshot meanwhile.
func TestStandbyNeedsTheHostsMemory(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.env = append(s.env, "BANGER_STANDBY_MIN_FREE=100000G") // more than any host has
	s.daemon()
	s.banger("vm", "run", "--rm", "--", "true").want(t, 0)
	waitFor(t, time.Minute, func() bool {
		b, _ := os.ReadFile(s.daemonLog())
		return strings.Contains(string(b), `"msg":"standby skipped"`)
	})
	if r := s.banger("image", "show", api.TinyImage).want(t, 0); !strings.Contains(r.stdout, "standby:") || !strings.Contains(r.stdout, "skipped") || !strings.Contains(r.stdout, "--standby-min-free") {
		t.Errorf("image show:\n%s", r.stdout)
	}
	var rep struct {
		Rows []struct{ Name, Status, Detail string }
	}
	s.banger("doctor", "--json").json(t, &rep)
	found := false
	for _, row := range rep.Rows {
		if row.Name == "standby" {
			found = true
			if row.Status != "warn" || !strings.Contains(row.Detail, "memory available") {
				t.Errorf("doctor's standby row: %+v", row)
			}
		}
	}
	if !found {
		t.Errorf("no standby row: %+v", rep.Rows)
	}
	r := s.banger("vm", "run", "--rm", "--", "true").want(t, 0)
	wantStart(t, r, true)
	if strings.Contains(r.stderr, "take standby") || len(s.standbyPIDs()) != 0 {
		t.Errorf("a standby was made: %v\n%s", s.standbyPIDs(), r.stderr)
	}
	s.assertNothingLeft()
}

// A daemon killed (kill -9) at each stage of a warm create leaves nothing
// behind once the next one starts: not the VM, not its directory, not the
// standby it took, not a QEMU; and the next create works.
func TestDaemonKilledDuringAWarmCreate(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	base := s.env
	s.daemon()
	s.banger("vm", "run", "--rm", "--", "true").want(t, 0) // the snapshot
	s.stopDaemon()
	for _, tc := range []struct {
		stage    string
		standbys string
	}{
		{"take standby", "1"}, // the standby out of its pool, not yet the VM's
		{"resume agent", "1"}, // the standby taken: the VM's directory and process
		{"restore", "0"},      // a QEMU loading the snapshot
		{"resume agent", "0"}, // a restored guest, before its identity
	} {
		t.Run(tc.stage+" standbys="+tc.standbys, func(t *testing.T) {
			s.env = append(base, "BANGER_STANDBYS="+tc.standbys, "BANGER_TEST_HOLD_STAGE=doomed:"+tc.stage)
			d := s.daemon()
			if tc.standbys != "0" {
				before := s.standbysReady()
				s.banger("vm", "run", "--rm", "--", "true").want(t, 0) // makes the standby
				s.waitStandbysReady(t, before+1)
			}
			var op api.Operation
			if err := s.call(api.MethodVMCreateBegin, api.VMCreate{Name: "doomed", Image: api.TinyImage}, &op); err != nil {
				t.Fatal(err)
			}
			waitStage(t, s, op.ID, tc.stage)
			d.Process.Signal(syscall.SIGKILL)
			waitFor(t, 10*time.Second, func() bool { return syscall.Kill(d.Process.Pid, 0) != nil || zombie(d.Process.Pid) })
			s.env = append(base, "BANGER_STANDBYS="+tc.standbys)
			s.daemon()
			s.banger("vm", "show", "doomed").want(t, 4)
			var failed api.Operation
			if err := s.call(api.MethodOperationStatus, api.OperationID{ID: op.ID}, &failed); err != nil || failed.State != api.OpFailed {
				t.Errorf("the interrupted create: %+v %v", failed, err)
			}
			s.assertNothingLeft()
			if pids, dirs := s.allEnginePIDs(), s.standbyDirs(); len(pids) != 0 || len(dirs) != 0 {
				t.Errorf("left behind: engines %v, standby directories %v", pids, dirs)
			}
			wantStart(t, s.banger("vm", "run", "--rm", "--", "true").want(t, 0), true)
			s.stopDaemon()
		})
	}
}

// standbysReady counts the standbys the daemon's log says were made.
func (s *sandbox) standbysReady() int {
	b, _ := os.ReadFile(s.daemonLog())
	return strings.Count(string(b), `"msg":"standby ready"`)
}

func (s *sandbox) standbyDirs() []string {
	dirs, _ := filepath.Glob(filepath.Join(s.state, "banger", "standby", "*"))
	return dirs
}
