// Package engine runs banger's VMs on QEMU's microvm machine with a direct
// kernel boot: it launches QEMU detached from the daemon, records in the
// VM's instance directory everything needed to find it again (pidfile,
// argv, sockets), controls it through QMP, re-attaches to it after a
// daemon restart, and decides once whether KVM can really run guests.
//
// It knows nothing of images, state or the guest agent's protocol: the
// caller gives it files and kernel parameters, and talks to the agent
// through the socket it names. It never deletes an instance directory.
package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"banger/internal/errdefs"
	"banger/internal/layout"
	"banger/logging"
)

// Binary is the QEMU system emulator banger runs.
const Binary = "qemu-system-x86_64"

// Accel is the accelerator QEMU runs the guest with.
type Accel string

// Accelerators.
const (
	// AccelAuto uses KVM when the probe says it can run guests, else TCG.
	AccelAuto Accel = "auto"
	AccelKVM  Accel = "kvm"
	// AccelTCG is QEMU's software emulation: slower, works everywhere.
	AccelTCG Accel = "tcg"
)

// ParseAccel parses "auto", "kvm" or "tcg"; empty is auto.
func ParseAccel(s string) (Accel, error) {
	switch a := Accel(strings.ToLower(strings.TrimSpace(s))); a {
	case "":
		return AccelAuto, nil
	case AccelAuto, AccelKVM, AccelTCG:
		return a, nil
	}
	return "", errdefs.Errorf(errdefs.ErrInvalid, "unknown accelerator %q (want auto, kvm or tcg)", s)
}

// QEMU is the microvm engine of one host. The daemon keeps one: it caches
// the KVM probe's answer.
type QEMU struct {
	// Binary is qemu-system-x86_64's path; empty looks it up in PATH.
	Binary string
	// StateDir keeps the KVM probe's answer across daemon restarts
	// (layout.KVMProbe); empty keeps it in memory only.
	StateDir string
	// ProbeTimeout bounds the KVM probe; zero means DefaultProbeTimeout.
	ProbeTimeout time.Duration

	mu  sync.Mutex // guards kvm; held during a probe so there is only one
	kvm *KVMStatus
}

// binary returns the QEMU to run, or an unavailable error that says which
// package to install.
func (q *QEMU) binary() (string, error) {
	name := q.Binary
	if name == "" {
		name = Binary
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", errdefs.Errorf(errdefs.ErrUnavailable, "%s not found (%v): install the Debian package qemu-system-x86", name, err)
	}
	return filepath.Abs(p)
}

// Path is the QEMU binary Launch runs.
func (q *QEMU) Path() (string, error) { return q.binary() }

// resolveAccel turns auto into kvm or tcg.
func (q *QEMU) resolveAccel(ctx context.Context, bin string, spec Spec) Accel {
	if spec.Accel != AccelAuto {
		return spec.Accel
	}
	st := q.kvmStatus(ctx, bin, spec.Kernel)
	if st.Usable {
		return AccelKVM
	}
	return AccelTCG
}

// Launch starts QEMU for spec, detached from the caller (its own session,
// no terminal, its output in files), and returns once QEMU answers on QMP.
// The guest is then booting; the caller waits for its agent on
// Instance.AgentSocket. Canceling ctx during Launch kills the VM; after
// Launch returns, ctx no longer matters: the VM lives on its own.
func (q *QEMU) Launch(ctx context.Context, spec Spec) (*Instance, error) {
	spec = spec.withDefaults()
	if err := spec.validate(); err != nil {
		return nil, err
	}
	bin, err := q.binary()
	if err != nil {
		return nil, err
	}
	accel := q.resolveAccel(ctx, bin, spec)
	var khz int
	if accel == AccelTCG {
		if khz, err = hostTSCkHz(); err != nil {
			return nil, fmt.Errorf("launch %s: %w", spec.Name, err)
		}
	}
	argv := buildArgv(bin, spec, accel, khz)
	dir := spec.Dir
	// The directory's files are about to be replaced: they must not be
	// a live VM's.
	if inst, err := Attach(ctx, dir); err == nil {
		return nil, errdefs.Errorf(errdefs.ErrConflict, "%s already runs a VM (qemu pid %d)", dir, inst.PID)
	} else if !errors.Is(err, ErrNotRunning) {
		return nil, errdefs.Errorf(errdefs.ErrConflict, "%s may run a VM: %v", dir, err)
	}
	if err := CleanRuntime(dir); err != nil {
		return nil, err
	}
	launched := false
	defer func() {
		if !launched {
			CleanRuntime(dir)
		}
	}()
	if err := writeJSONAtomic(filepath.Join(dir, layout.Argv), argv); err != nil {
		return nil, fmt.Errorf("record argv: %w", err)
	}

	// The sockets are bound here and handed to QEMU as fds 3, 4 (and 5
	// for a user-mode network), so they exist before QEMU runs: a client
	// connecting early waits in the backlog for QEMU instead of polling
	// for a file to appear.
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	socks := []string{layout.QMPSocket, layout.AgentSocket}
	if spec.Net != nil {
		socks = append(socks, layout.NetSocket)
	}
	for _, s := range socks {
		f, err := listenFile(filepath.Join(dir, s))
		if err != nil {
			return nil, fmt.Errorf("launch %s: %w", spec.Name, err)
		}
		files = append(files, f)
	}
	logFile, err := os.OpenFile(filepath.Join(dir, layout.EngineLog), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", layout.EngineLog, err)
	}
	files = append(files, logFile)

	cmd := &exec.Cmd{
		Path:       bin,
		Args:       argv,
		Dir:        dir,
		Stdout:     logFile,
		Stderr:     logFile,
		ExtraFiles: files[:len(socks)],
		// Its own session: no signal of the daemon's terminal or process
		// group reaches it, and it outlives the daemon.
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	inst, exited := newChild(dir, cmd.Process, argv)
	// Reap it: the daemon is its parent until the daemon dies.
	go func() { exited(cmd.Wait()) }()
	if err := writeFileAtomic(filepath.Join(dir, layout.PID), []byte(strconv.Itoa(inst.PID)+"\n")); err != nil {
		inst.kill()
		return nil, fmt.Errorf("write pidfile: %w", err)
	}
	log := logging.From(ctx)
	if err := inst.waitQMP(ctx); err != nil {
		if ctx.Err() == nil {
			// QMP failing at start means QEMU is on its way out; give it a
			// moment to exit, so the error can say why.
			inst.waitFor(context.Background(), 2*time.Second)
		}
		exitedAtStart := !inst.Running()
		inst.kill()
		<-inst.Done()
		if exitedAtStart {
			return nil, fmt.Errorf("launch %s: %w: %s", spec.Name, ErrExitedAtStart, tail(filepath.Join(dir, layout.EngineLog)))
		}
		return nil, fmt.Errorf("launch %s: %w", spec.Name, err)
	}
	launched = true
	log.Debug().Str("dir", dir).Int("pid", inst.PID).Str("accel", string(accel)).
		Float64("duration_ms", logging.Millis(time.Since(start))).Msg("qemu started")
	return inst, nil
}

// listenFile binds a Unix socket at path and returns its listening file
// descriptor for QEMU to inherit. The socket file stays when our copy is
// closed.
func listenFile(path string) (*os.File, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	defer ln.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	f, err := ln.File()
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return f, nil
}

// tail returns the last lines of a log file, for an error message.
func tail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(no " + filepath.Base(path) + ")"
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	s := strings.Join(lines, "; ")
	if s == "" {
		return "(" + filepath.Base(path) + " is empty)"
	}
	return s
}

func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func writeJSONAtomic(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'))
}
