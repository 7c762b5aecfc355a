package e2e_test

// Many real guests through one daemon, several at once: nothing may hang
// and nothing may be left behind.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/layout"
	"banger/rpc"
)

// stressCreateTimeout bounds one `vm create` of the stress test. Under TCG
// four boots at once take ~12 s each; the daemon's own boot timeout is
// longer (3 min), so a hung boot is caught here, with its console.
const stressCreateTimeout = 2 * time.Minute

// TestCreateDeleteCycles runs 20 create/delete cycles, 4 at a time, on
// real guests, then checks that nothing leaks: no VM rows, no instance
// directories, no engine processes, no children (zombies) of the daemon,
// no sockets but the daemon's, no file descriptors the daemon did not
// have before, no operation still running.
//
// Even cycles stop the VM (the agent powers the guest off) and delete it;
// odd ones delete it running (--force kills it): both ways out are used
// ten times.
func TestCreateDeleteCycles(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	// The leak checks below count the daemon's children, sockets and
	// files: a standby (restored ahead of time, kept on purpose) would be
	// one of each. TestWarmStarts covers the standbys.
	s.env = append(s.env, "BANGER_STANDBY=false")
	d := s.daemon()
	// Whatever a failure leaves running dies with the test (this cleanup
	// runs before the sandbox's).
	t.Cleanup(func() {
		for _, pid := range s.enginePIDs() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	// The default image is built once, by the first create; --no-start
	// builds it without a boot.
	start := time.Now()
	s.banger("vm", "create", "--name", "warm", "--no-start").want(t, 0)
	s.banger("vm", "delete", "warm").want(t, 0)
	t.Logf("default image built in %s", time.Since(start).Round(time.Millisecond))
	// One call's connection may still be closing on the daemon's side.
	time.Sleep(100 * time.Millisecond)
	fdsBefore := openFDs(d.Process.Pid)

	const workers, cyclesEach = 4, 5
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		failed  []string
		bootIDs = map[string]string{} // boot id -> VM
		took    []time.Duration
	)
	start = time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range cyclesEach {
				n := w*cyclesEach + c
				name := "c" + strconv.Itoa(n)
				t0 := time.Now()
				vm, err := s.createDeleteCycle(name, n%2 == 0)
				mu.Lock()
				took = append(took, time.Since(t0))
				if err == nil {
					if other, dup := bootIDs[vm.BootID]; dup {
						err = fmt.Errorf("%s: boot id %s is also %s's: not a boot of its own", name, vm.BootID, other)
					}
					bootIDs[vm.BootID] = name
				}
				if err != nil {
					failed = append(failed, err.Error())
				}
				mu.Unlock()
				if err != nil {
					return // this worker stops; the others go on
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d cycles, %d at a time, in %s (cycle median %s)", len(took), workers,
		time.Since(start).Round(time.Millisecond), time.Duration(median(took)).Round(time.Millisecond))
	for _, f := range failed {
		t.Error(f)
	}
	if len(failed) == 0 && len(bootIDs) != workers*cyclesEach {
		t.Errorf("%d distinct boots, want %d", len(bootIDs), workers*cyclesEach)
	}

	// Nothing leaks.
	var vms []api.VM
	s.banger("vm", "list", "--json").want(t, 0).json(t, &vms)
	if len(vms) != 0 {
		t.Errorf("VM rows left: %+v", vms)
	}
	if dirs := s.vmDirs(); len(dirs) != 0 {
		t.Errorf("instance directories left: %v", dirs)
	}
	if pids := s.enginePIDs(); len(pids) != 0 {
		t.Errorf("engine processes left: %v", pids)
	}
	if kids := childrenOf(d.Process.Pid); len(kids) != 0 {
		t.Errorf("the daemon still has children (zombies are state Z): %v", kids)
	}
	// The daemon's two sockets (rpc and stream), nothing of a VM.
	if socks := socketsUnder(s.dir); len(socks) != 2 || !slices.Contains(socks, s.socket()) || !slices.Contains(socks, layout.StreamSocket(s.socket())) {
		t.Errorf("sockets under the sandbox: %v, want only %s and its stream socket", socks, s.socket())
	}
	// The database's connection pool may have grown (to its bound, 4
	// connections); anything else open now and not before is a leak.
	dbFile := filepath.Join(s.state, "banger", "banger.db")
	var fdsAfter []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		fdsAfter = openFDs(d.Process.Pid)
		if len(withoutPrefix(fdsAfter, dbFile)) <= len(withoutPrefix(fdsBefore, dbFile)) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if a, b := withoutPrefix(fdsAfter, dbFile), withoutPrefix(fdsBefore, dbFile); len(a) > len(b) {
		t.Errorf("the daemon has %d open files besides its database, %d before the cycles:\nbefore %v\nafter  %v",
			len(a), len(b), b, a)
	}
	if n := len(fdsAfter) - len(withoutPrefix(fdsAfter, dbFile)); n > 3*4 {
		t.Errorf("the daemon has %d files of its database open (4 connections at most): %v", n, fdsAfter)
	}
	var ops []api.Operation
	s.banger("operation", "list", "--json").want(t, 0).json(t, &ops)
	for _, op := range ops {
		if op.State != api.OpSucceeded {
			t.Errorf("operation %s (%s %s) is %s", op.ID, op.Kind, op.Target, op.State)
		}
	}
	s.banger("ping").want(t, 0)
	if b, _ := os.ReadFile(s.daemonLog()); bytes.Contains(b, []byte(`"level":"error"`)) {
		t.Errorf("the daemon logged errors:\n%s", grepLines(b, `"level":"error"`))
	}
}

// createDeleteCycle creates and boots the VM name, checks that it runs,
// and deletes it: stop, then delete when graceful, else delete --force.
// It runs on a goroutine of its own, so it returns what went wrong
// rather than failing the test; a create that fails or hangs is reported
// with the guest's console.
func (s *sandbox) createDeleteCycle(name string, graceful bool) (api.VM, error) {
	var vm api.VM
	console := followConsole(s.socket(), name)
	r, err := s.runTimeout(stressCreateTimeout, "vm", "create", "--name", name, "--json")
	log := console()
	if err != nil || r.code != 0 {
		return vm, fmt.Errorf("vm create %s: exit %d, %v\nstderr: %s\nconsole (last 4000 bytes):\n%s",
			name, r.code, err, r.stderr, lastBytes(log, 4000))
	}
	if err := json.Unmarshal([]byte(r.stdout), &vm); err != nil {
		return vm, fmt.Errorf("vm create %s --json: %v\n%s", name, err, r.stdout)
	}
	if vm.State != "running" || vm.PID == 0 || vm.BootID == "" {
		return vm, fmt.Errorf("vm create %s: %+v", name, vm)
	}
	if !strings.Contains(log, "Linux version") {
		return vm, fmt.Errorf("%s's console lacks the kernel's banner:\n%s", name, lastBytes(log, 4000))
	}
	steps := [][]string{{"vm", "delete", "--force", name}}
	if graceful {
		steps = [][]string{{"vm", "stop", name}, {"vm", "delete", name}}
	}
	for _, args := range steps {
		r, err := s.runTimeout(time.Minute, args...)
		if err != nil || r.code != 0 {
			return vm, fmt.Errorf("%s: exit %d, %v\nstderr: %s", strings.Join(args, " "), r.code, err, r.stderr)
		}
	}
	if syscall.Kill(vm.PID, 0) == nil {
		if b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(vm.PID), "cmdline")); bytes.Contains(b, []byte(vm.InstanceDir)) {
			return vm, fmt.Errorf("%s deleted but its qemu %d still runs", name, vm.PID)
		}
	}
	return vm, nil
}

// runTimeout runs the client like banger, for a goroutine: it returns an
// error where banger would fail the test, and kills the client after d.
func (s *sandbox) runTimeout(d time.Duration, args ...string) (result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, bangerBin, args...)
	cmd.Env = s.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{out.String(), errb.String(), 0}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
		err = nil
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("no answer within %s", d)
	}
	return r, err
}

// followConsole keeps the console log of the VM name open from when it
// appears until the returned function is called, which returns the
// whole log. The open file survives a failed create, whose undo removes
// the VM's directory and, with it, what `vm logs` would show.
func followConsole(socket, name string) (stop func() string) {
	done := make(chan struct{})
	opened := make(chan *os.File, 1)
	c := &rpc.Client{Socket: socket}
	go func() {
		defer close(opened)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var vm api.VM
			err := c.Call(ctx, api.MethodVMShow, api.VMRef{Name: name}, &vm)
			cancel()
			if err == nil && vm.InstanceDir != "" {
				if f, err := os.Open(filepath.Join(vm.InstanceDir, "console.log")); err == nil {
					opened <- f
					return
				}
			}
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return func() string {
		close(done)
		f := <-opened
		if f == nil {
			return "(the VM's console log never appeared)"
		}
		defer f.Close()
		b, _ := io.ReadAll(f)
		return string(b)
	}
}

func lastBytes(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// withoutPrefix returns the fds of openFDs whose target does not start
// with prefix.
func withoutPrefix(fds []string, prefix string) []string {
	var out []string
	for _, fd := range fds {
		if _, target, _ := strings.Cut(fd, "->"); !strings.HasPrefix(target, prefix) {
			out = append(out, fd)
		}
	}
	return out
}

// openFDs lists what the process pid has open (the fds' link targets).
func openFDs(pid int) []string {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	entries, _ := os.ReadDir(dir)
	var fds []string
	for _, e := range entries {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		fds = append(fds, e.Name()+"->"+target)
	}
	return fds
}

// childrenOf lists the processes whose parent is pid, with their state
// (Z for a zombie).
func childrenOf(pid int) []string {
	var kids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) >= 2 && f[1] == strconv.Itoa(pid) {
			kids = append(kids, fmt.Sprintf("%s %s state %s", e.Name(), b[:i+1], f[0]))
		}
	}
	return kids
}

// socketsUnder lists the Unix sockets in the tree at dir.
func socketsUnder(dir string) []string {
	var socks []string
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.Type()&fs.ModeSocket != 0 {
			socks = append(socks, p)
		}
		return nil
	})
	return socks
}

func grepLines(b []byte, substr string) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
