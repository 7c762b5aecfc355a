package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
	"banger/internal/layout"
	"banger/logging"
	"banger/packaging"
	"banger/rpc"
)

// StartTimeout bounds the wait for a daemon started by the client.
const StartTimeout = 15 * time.Second

// target is one command's view of the daemon it talks to: where it is,
// whether the client may start it, and whom to trust to serve it.
type target struct {
	socket    string
	stateDir  string
	logLevel  string
	autostart bool
	// system is set when socket is the system install's daemon, which
	// systemd runs: the client never starts a daemon of its own there.
	system bool
	// trusted are the uids whose daemon this client talks to: its own,
	// root's, and the system install's owner's.
	trusted []int
}

func newTarget(c *cli.Context) (*target, error) {
	s := &target{
		socket:    c.String("socket"),
		stateDir:  c.String("state-dir"),
		logLevel:  c.String("log-level"),
		autostart: !c.Bool("no-autostart"),
	}
	s.trusted = []int{os.Getuid(), 0}
	if s.socket == "" {
		s.socket = layout.DefaultSocket()
		if sock, owner, ok := systemSocket(packaging.System{Root: "/"}, os.Getuid()); ok {
			s.socket, s.system, s.autostart = sock, true, false
			s.trusted = append(s.trusted, owner)
			if s.stateDir == "" {
				s.stateDir = layout.SystemStateDir // its logs, for trace
			}
		}
	}
	if s.stateDir == "" {
		s.stateDir = layout.State()
	}
	if s.logLevel != "" {
		if _, err := logging.ParseLevel(s.logLevel); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// systemSocket returns the system install's daemon socket and its owner
// when a client given no --socket (BANGER_SOCKET) should use it:
// install.toml is there, names the caller as the owner (or the caller is
// root), and the daemon's socket exists.
func systemSocket(sys packaging.System, uid int) (string, int, bool) {
	cfg, err := sys.ReadConfig()
	if err != nil || (cfg.UID != uid && uid != 0) {
		return "", 0, false
	}
	sock := sys.Path(layout.SystemDaemonSocket)
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Type() != os.ModeSocket {
		return "", 0, false
	}
	return sock, cfg.UID, true
}

// client calls the daemon's rpc socket.
func (s *target) client() *rpc.Client { return s.clientOf(s.socket) }

// clientOf is a client of one of the daemon's sockets that sends nothing
// to a server run by a user this client does not trust: in a shared /tmp
// (no XDG_RUNTIME_DIR: cron, su, ssh without a login session) another
// user could have made the socket first, to read a command's argv, its
// environment and its input, and answer with forged output.
func (s *target) clientOf(socket string) *rpc.Client {
	return &rpc.Client{Socket: socket, Server: func(p rpc.Peer) error {
		if slices.Contains(s.trusted, int(p.UID)) {
			return nil
		}
		return fmt.Errorf("it is run by uid %d, not by you (uid %d), root or banger's installed owner (has another user made %s?)", p.UID, os.Getuid(), filepath.Dir(socket))
	}}
}

// checkPath checks the daemon's default directory before anything is
// dialed there, as the daemon checks it before it serves: a directory
// someone else owns, a symlink or a directory others may write is
// refused. A --socket given by the caller is the caller's choice; the
// server's credentials are still checked (clientOf).
func (s *target) checkPath() error {
	if filepath.Dir(s.socket) != layout.Runtime() {
		return nil
	}
	if err := layout.CheckDialable(s.socket, s.trusted...); err != nil {
		return rpc.Errorf(rpc.CodeUnauthorized, "refusing the daemon's socket: %v; remove it, or set XDG_RUNTIME_DIR to a directory of your own", err)
	}
	if err := layout.CheckDialable(layout.StreamSocket(s.socket), s.trusted...); err != nil {
		return rpc.Errorf(rpc.CodeUnauthorized, "refusing the daemon's stream socket: %v; remove it, or set XDG_RUNTIME_DIR to a directory of your own", err)
	}
	return nil
}

// daemon is the daemon's typed client, starting the daemon first when it
// is not running (unless --no-autostart).
func (s *target) daemon() api.Client { return api.Client{Caller: rpc.CallerFunc(s.call)} }

// running is the daemon's typed client that never starts it.
func (s *target) running() api.Client { return api.Client{Caller: rpc.CallerFunc(s.callRunning)} }

// call calls the daemon, starting it first when it is not running (unless
// --no-autostart).
func (s *target) call(ctx context.Context, method string, params, result any) error {
	if err := s.checkPath(); err != nil {
		return err
	}
	err := s.client().Call(ctx, method, params, result)
	if !errors.Is(err, rpc.ErrUnreachable) || !s.autostart {
		return s.unreachable(err)
	}
	if err := s.startDaemon(ctx); err != nil {
		return err
	}
	return s.unreachable(s.client().Call(ctx, method, params, result))
}

// stream opens a session (vm.exec, vm.copy) on the daemon's stream
// socket, starting the daemon first when it is not running.
func (s *target) stream(ctx context.Context, method string, params, result any) (*rpc.Stream, error) {
	if err := s.checkPath(); err != nil {
		return nil, err
	}
	c := s.clientOf(layout.StreamSocket(s.socket))
	st, err := c.OpenStream(ctx, method, params, result)
	if !errors.Is(err, rpc.ErrUnreachable) {
		return st, err
	}
	// No stream socket: no daemon, or one older than this client.
	if perr := s.client().Call(ctx, api.MethodPing, nil, nil); perr == nil {
		return nil, &cliError{code: codeUnreachable, exit: ExitUnreachable,
			err: fmt.Errorf("the daemon on %s serves no sessions (it is older than this client): restart it with `banger daemon stop` and run the command again", s.socket)}
	}
	if !s.autostart {
		return nil, s.unreachable(err)
	}
	if err := s.startDaemon(ctx); err != nil {
		return nil, err
	}
	st, err = c.OpenStream(ctx, method, params, result)
	return st, s.unreachable(err)
}

// callRunning calls the daemon only if it is already running.
func (s *target) callRunning(ctx context.Context, method string, params, result any) error {
	if err := s.checkPath(); err != nil {
		return err
	}
	return s.unreachable(s.client().Call(ctx, method, params, result))
}

// unreachable rewords a dial failure for people.
func (s *target) unreachable(err error) error {
	if errors.Is(err, rpc.ErrUnreachable) {
		return &cliError{code: codeUnreachable, exit: ExitUnreachable,
			err: fmt.Errorf("bangerd is not running on %s (start it with %s): %w", s.socket, s.startHint(), err)}
	}
	return err
}

// startHint says how to start the target's daemon.
func (s *target) startHint() string {
	if s.system {
		return "`sudo systemctl start " + layout.DaemonUnit + "`"
	}
	return "`banger daemon start`"
}

// startDaemon starts bangerd in the background, detached in a Unix
// session of its own (setsid) so it outlives this command, and waits
// until it answers ping.
// It re-executes /proc/self/exe, never a binary found on PATH.
func (s *target) startDaemon(ctx context.Context) error {
	if s.system {
		// systemd runs that daemon, as the owner, with the install's flags.
		return &cliError{code: codeUnreachable, exit: ExitUnreachable,
			err: fmt.Errorf("the system daemon does not answer on %s: start it with %s (journalctl -u %s), or give --socket for a daemon of your own", s.socket, s.startHint(), layout.DaemonUnit)}
	}
	args := []string{api.AppletDaemon, "--socket", s.socket, "--state-dir", s.stateDir}
	if s.logLevel != "" {
		args = append(args, "--log-level", s.logLevel)
	}
	cmd := &exec.Cmd{
		Path: "/proc/self/exe",
		Args: args,
		// stdin, stdout and stderr are /dev/null: the daemon writes its own
		// log file, and a pipe to this short-lived process would break.
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start bangerd: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	logPath := filepath.Join(s.stateDir, layout.DaemonLog)
	deadline := time.Now().Add(StartTimeout)
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		pingCtx, cancel := context.WithTimeout(ctx, time.Second)
		err := s.client().Call(pingCtx, api.MethodPing, nil, nil)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case err := <-exited:
			return &cliError{code: codeUnreachable, exit: ExitUnreachable,
				err: fmt.Errorf("bangerd exited at start (%v): %s", err, lastError(logPath))}
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		if time.Now().After(deadline) {
			return &cliError{code: codeUnreachable, exit: ExitUnreachable,
				err: fmt.Errorf("bangerd did not answer on %s within %s; see %s", s.socket, StartTimeout, logPath)}
		}
	}
}

// lastError is the last error record of the daemon's log, for a daemon
// that died at start.
func lastError(logPath string) string {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return "see " + logPath
	}
	msg := lastErrorRecord(b)
	if msg == "" {
		return "see " + logPath
	}
	return msg + " (log: " + logPath + ")"
}
