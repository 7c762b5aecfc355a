package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"banger/internal/layout"
)

// ErrNotRunning is wrapped when an instance directory has no live QEMU of
// ours: no pidfile, a dead pid, or a pid that now belongs to another
// process.
var ErrNotRunning = errors.New("vm is not running")

// ErrExitedAtStart is QEMU ending before it answered QMP: a bad argument,
// a kernel it cannot load, or a saved state (Spec.Incoming) that does not
// load.
var ErrExitedAtStart = errors.New("qemu exited at start")

// Instance is a running (or just exited) QEMU process of one VM.
type Instance struct {
	Dir   string
	PID   int
	Argv  []string
	Accel Accel

	proc   *os.Process     // signals go through its pidfd: never to a reused pid
	exited <-chan struct{} // closed when the process is gone
	qmpMu  sync.Mutex      // serializes QMP connections: QEMU serves one at a time

	mu      sync.Mutex // guards waitErr
	waitErr error      // the process's exit status, when we are its parent
}

// newChild returns the Instance of a process we started, and the function
// that records its end (called with cmd.Wait's error once it is reaped).
func newChild(dir string, proc *os.Process, argv []string) (*Instance, func(error)) {
	exited := make(chan struct{})
	i := &Instance{Dir: dir, PID: proc.Pid, Argv: argv, Accel: accelOf(argv), proc: proc, exited: exited}
	return i, func(err error) {
		i.mu.Lock()
		i.waitErr = err
		i.mu.Unlock()
		close(exited)
	}
}

// layout.AgentSocket is the host end of the guest agent's serial port.
// Moved tells the instance its directory was renamed to dir (its
// sockets and files moved with it; QEMU keeps its open files). Only for
// an instance nothing else uses yet: a standby a VM takes.
func (i *Instance) Moved(dir string) { i.Dir = dir }

func (i *Instance) AgentSocket() string { return filepath.Join(i.Dir, layout.AgentSocket) }

// layout.NetSocket is the host end of a user-mode VM's network card.
func (i *Instance) NetSocket() string { return filepath.Join(i.Dir, layout.NetSocket) }

// layout.QMPSocket is QEMU's control socket.
func (i *Instance) QMPSocket() string { return filepath.Join(i.Dir, layout.QMPSocket) }

// layout.Console is the file with the guest's serial console.
func (i *Instance) ConsoleLog() string { return filepath.Join(i.Dir, layout.Console) }

// Done is closed when the QEMU process has exited.
func (i *Instance) Done() <-chan struct{} { return i.exited }

// Running reports whether the process is still there.
func (i *Instance) Running() bool {
	select {
	case <-i.exited:
		return false
	default:
		return true
	}
}

// Wait waits for QEMU to exit. For a process we launched it returns its
// exit error (nil for a clean exit); an attached one's status belongs to
// its parent, and Wait returns nil.
func (i *Instance) Wait(ctx context.Context) error {
	select {
	case <-i.exited:
		i.mu.Lock()
		defer i.mu.Unlock()
		return i.waitErr
	case <-ctx.Done():
		return fmt.Errorf("wait for qemu %d to exit: %w", i.PID, ctx.Err())
	}
}

// Attach finds the QEMU of an instance directory again, after a daemon
// restart: the pid from the pidfile must be alive, its command line must
// be exactly the recorded argv (so a reused pid is never taken for ours),
// and QMP must answer. Anything else wraps ErrNotRunning.
func Attach(ctx context.Context, dir string) (*Instance, error) {
	raw, err := os.ReadFile(filepath.Join(dir, layout.PID))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("attach %s: %w (no pidfile)", dir, ErrNotRunning)
	} else if err != nil {
		return nil, fmt.Errorf("attach %s: %w", dir, err)
	}
	// Without a pid and the argv to check it against, no process can be
	// proven to be this VM's.
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid <= 1 {
		return nil, fmt.Errorf("attach %s: %w (bad pidfile %q)", dir, ErrNotRunning, strings.TrimSpace(string(raw)))
	}
	var argv []string
	raw, err = os.ReadFile(filepath.Join(dir, layout.Argv))
	if err == nil {
		err = json.Unmarshal(raw, &argv)
	}
	if err != nil || len(argv) == 0 {
		return nil, fmt.Errorf("attach %s: %w (no usable %s: %v)", dir, ErrNotRunning, layout.Argv, err)
	}
	// Watch for the exit first, then check the command line: a process
	// that passes the check is then the one being watched.
	exited, stop, err := watchExit(pid)
	if err != nil {
		return nil, fmt.Errorf("attach %s: pid %d: %w", dir, pid, ErrNotRunning)
	}
	inst, err := attachPID(ctx, dir, pid, argv, exited)
	if err != nil {
		stop()
		return nil, err
	}
	return inst, nil
}

func attachPID(ctx context.Context, dir string, pid int, argv []string, exited <-chan struct{}) (*Instance, error) {
	proc, err := os.FindProcess(pid) // holds a pidfd on Linux
	if err != nil {
		return nil, fmt.Errorf("attach %s: pid %d: %w", dir, pid, ErrNotRunning)
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || !slices.Equal(strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00"), argv) {
		proc.Release()
		return nil, fmt.Errorf("attach %s: pid %d is not this VM's qemu: %w", dir, pid, ErrNotRunning)
	}
	inst := &Instance{Dir: dir, PID: pid, Argv: argv, Accel: accelOf(argv), proc: proc, exited: exited}
	if _, err := inst.Status(ctx); err != nil {
		proc.Release()
		return nil, fmt.Errorf("attach %s: qemu %d does not answer on QMP: %w", dir, pid, err)
	}
	return inst, nil
}

// Status is the VM's run state as QMP's query-status gives it.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // "running", "paused", "shutdown", ...
}

// Status asks QEMU for the VM's run state.
func (i *Instance) Status(ctx context.Context) (Status, error) {
	var st Status
	raw, err := i.qmp(ctx, "query-status")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, fmt.Errorf("query-status: %w", err)
	}
	return st, nil
}

// PowerDown presses the guest's ACPI power button (system_powerdown); the
// agent powers the guest off, and QEMU exits. It returns at once.
func (i *Instance) PowerDown(ctx context.Context) error {
	_, err := i.qmp(ctx, "system_powerdown")
	return err
}

// Quit asks QEMU to exit at once, as a power cut would.
func (i *Instance) Quit(ctx context.Context) error {
	_, err := i.qmp(ctx, "quit")
	if err != nil && !i.Running() {
		return nil // it quit before it could answer
	}
	return err
}

// Stop ends the VM gracefully if it can: the power button, then up to
// grace for the guest to power off; then QMP quit; then SIGKILL. It
// returns once the process is gone (and its pidfile and sockets removed),
// or with ctx's error.
func (i *Instance) Stop(ctx context.Context, grace time.Duration) error {
	if i.Running() {
		if err := i.PowerDown(ctx); err == nil {
			if i.waitFor(ctx, grace) {
				return i.cleanup()
			}
		}
	}
	if i.Running() {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := i.Quit(qctx)
		cancel()
		if err == nil && i.waitFor(ctx, 2*time.Second) {
			return i.cleanup()
		}
	}
	return i.Kill(ctx)
}

// KillWait bounds how long Kill waits for the process to go.
const KillWait = 5 * time.Second

// Kill sends SIGKILL and waits (at most KillWait) for the process to go,
// then removes its pidfile and sockets.
func (i *Instance) Kill(ctx context.Context) error {
	i.kill()
	ctx, cancel := context.WithTimeout(ctx, KillWait)
	defer cancel()
	select {
	case <-i.exited:
		return i.cleanup()
	case <-ctx.Done():
		return fmt.Errorf("kill qemu %d: still running: %w", i.PID, ctx.Err())
	}
}

// kill sends SIGKILL unless the process is gone.
func (i *Instance) kill() {
	if i.Running() {
		i.proc.Signal(syscall.SIGKILL)
	}
}

func (i *Instance) waitFor(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-i.exited:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

func (i *Instance) cleanup() error {
	return CleanRuntime(i.Dir)
}

// waitQMP waits until QEMU answers on QMP, or exits, or ctx ends.
func (i *Instance) waitQMP(ctx context.Context) error {
	_, err := i.qmp(ctx, "query-status")
	return err
}

// qmp runs one QMP command without arguments; see qmpCall.
func (i *Instance) qmp(ctx context.Context, command string) (json.RawMessage, error) {
	return i.qmpCall(ctx, qmp.Command{Execute: command})
}

// hmp runs a human monitor command line through QMP's
// human-monitor-command and returns what it printed. HMP commands report
// their failures as printed text, not as QMP errors: the caller reads it.
func (i *Instance) hmp(ctx context.Context, line string) (string, error) {
	raw, err := i.qmpCall(ctx, qmp.Command{Execute: "human-monitor-command", Args: map[string]string{"command-line": line}})
	if err != nil {
		return "", err
	}
	var out string
	if err := json.Unmarshal(raw, &out); err != nil {
		return "", fmt.Errorf("human-monitor-command %q: %w", line, err)
	}
	return strings.TrimSpace(out), nil
}

// qmpCall runs one QMP command in a session of its own: QEMU serves one
// QMP client at a time, so holding a session open would lock out a
// restarted daemon's Attach. The go-qemu monitor takes no context; the
// session runs in a goroutine that ends when QEMU answers or exits, and
// the caller stops waiting when ctx ends or QEMU exits.
func (i *Instance) qmpCall(ctx context.Context, cmd qmp.Command) (json.RawMessage, error) {
	type result struct {
		raw json.RawMessage
		err error
	}
	done := make(chan result, 1)
	go func() {
		i.qmpMu.Lock()
		defer i.qmpMu.Unlock()
		raw, err := runQMP(i.QMPSocket(), cmd)
		done <- result{raw, err}
	}()
	command := cmd.Execute
	select {
	case r := <-done:
		if r.err != nil {
			if !i.Running() {
				return nil, fmt.Errorf("qmp %s: qemu %d exited: %w", command, i.PID, ErrNotRunning)
			}
			return nil, fmt.Errorf("qmp %s: %w", command, r.err)
		}
		return r.raw, nil
	case <-i.exited:
		return nil, fmt.Errorf("qmp %s: qemu %d exited: %w", command, i.PID, ErrNotRunning)
	case <-ctx.Done():
		return nil, fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

// qmpDialTimeout bounds connecting to the socket; the socket's backlog
// holds a connection until QEMU accepts it, so this is not the wait for
// QEMU's answer.
const qmpDialTimeout = 5 * time.Second

func runQMP(socket string, command qmp.Command) (json.RawMessage, error) {
	var raw json.RawMessage
	err := withQMP(socket, func(run qmpRunner) (err error) {
		raw, err = run(command)
		return err
	})
	return raw, err
}

// qmpRunner runs one command on an open QMP connection and returns its
// "return" value.
type qmpRunner func(qmp.Command) (json.RawMessage, error)

// qmpIDs numbers the commands sent over QMP.
var qmpIDs atomic.Uint64

// withQMP opens a QMP connection on socket, runs fn with it, and closes it.
func withQMP(socket string, fn func(run qmpRunner) error) error {
	var mon *qmp.SocketMonitor
	var err error
	// QEMU listens with a backlog of one; a third client in line is
	// refused with EAGAIN until the queue moves.
	for try := 0; ; try++ {
		mon, err = qmp.NewSocketMonitor("unix", socket, qmpDialTimeout)
		if err == nil || !errors.Is(err, syscall.EAGAIN) || try == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer mon.Disconnect()
	if err := mon.Connect(); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	return fn(func(command qmp.Command) (json.RawMessage, error) {
		// Each command has an id, and its answer is the one with that id:
		// an answer QEMU gives this connection for another's command is
		// not taken for it.
		cmd, err := json.Marshal(struct {
			qmp.Command
			ID string `json:"id"`
		}{command, fmt.Sprintf("banger-%d", qmpIDs.Add(1))})
		if err != nil {
			return nil, err
		}
		raw, err := mon.Run(cmd)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", command.Execute, err)
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
		}
		if err := json.Unmarshal(raw, &resp); err != nil {
			return nil, fmt.Errorf("%s: decode reply: %w", command.Execute, err)
		}
		return bytes.TrimSpace(resp.Return), nil
	})
}

// qmpConn runs fn on one QMP connection of its own, for a sequence of
// commands that polls (a save or a load): a connection per poll would cost
// QEMU's main loop, which does the work, a handshake each time. The
// caller stops waiting when ctx ends or QEMU exits.
func (i *Instance) qmpConn(ctx context.Context, what string, fn func(run qmpRunner) error) error {
	done := make(chan error, 1)
	go func() {
		i.qmpMu.Lock()
		defer i.qmpMu.Unlock()
		done <- withQMP(i.QMPSocket(), fn)
	}()
	select {
	case err := <-done:
		if err != nil && !i.Running() {
			return fmt.Errorf("%s: qemu %d exited: %w", what, i.PID, ErrNotRunning)
		}
		return err
	case <-i.exited:
		return fmt.Errorf("%s: qemu %d exited: %w", what, i.PID, ErrNotRunning)
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
}
