package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"banger/internal/session"
	"banger/logging"
	"banger/rpc"
)

// drainIdle is how long the output of a command that exited may stay
// silent before its session ends without waiting for end-of-file: a
// background process the command started can hold its output open
// forever.
const drainIdle = 200 * time.Millisecond

// exec starts agent.exec. Params are checked before the ok response; a
// command that cannot start is reported after it, in the Exit frame, as
// a shell reports it.
func (a *agent) exec(_ context.Context, p session.Exec) (struct{}, rpc.StreamFunc, error) {
	if a.reaper == nil {
		return struct{}{}, nil, rpc.Errorf(rpc.CodeUnavailable, "this agent does not run commands")
	}
	spec, err := newExecSpec(p, guestExecDefaults())
	if err != nil {
		return struct{}{}, nil, rpc.Errorf(rpc.CodeInvalidParams, "%v", err)
	}
	return struct{}{}, func(ctx context.Context, conn net.Conn) error {
		return runExec(logging.From(ctx), a.reaper, spec, conn, func(c *command) func() {
			return a.sessions.add(rpc.OpIDFrom(ctx), c)
		}, a.flushRecords)
	}, nil
}

// runExec runs one session; track registers its command for agent.signal
// while it runs; flush sends the records so far to the host.
func runExec(log *zerolog.Logger, r *reaper, spec execSpec, conn net.Conn, track func(*command) func(), flush func()) error {
	w := session.NewWriter(conn)
	start := time.Now()
	c, err := startCommand(r, spec)
	if err != nil {
		var se *startError
		if !errors.As(err, &se) {
			se = &startError{code: codeCannotRun, msg: err.Error()}
		}
		log.Info().Str("program", spec.argv[0]).Int("code", se.code).Str("error", se.msg).Msg("command did not start")
		return w.WriteJSON(session.Exit, session.ExitStatus{Code: se.code, Error: se.msg})
	}
	// The program's name at info, its arguments at debug only: they are
	// the user's, and may hold what a log should not.
	pid := c.proc.Pid // os.Process forgets it once waited for
	log.Info().Str("program", spec.argv[0]).Int("pid", pid).Bool("pty", c.pty != nil).Msg("command started")
	log.Debug().Strs("argv", spec.argv).Int("pid", pid).Msg("command's arguments")
	untrack := track(c)
	_, err = c.serve(conn, w, func(st session.ExitStatus) {
		log.Info().Int("pid", pid).Int("code", st.Code).Int("signal", st.Signal).
			Float64("duration_ms", logging.Millis(time.Since(start))).Msg("command ended")
		flush()
	})
	untrack()
	if err != nil {
		log.Info().Int("pid", pid).Err(err).Msg("the host left the session")
	}
	return err
}

// command is a started agent.exec: its process, and the agent's ends of
// its standard input and output.
type command struct {
	r       *reaper
	proc    *os.Process
	status  <-chan unix.WaitStatus
	stdin   *os.File // the pipe to its input, or the PTY master
	pty     *os.File // the PTY master, when it runs on one
	outputs []output
}

type output struct {
	f    *os.File
	kind session.Kind
}

func startCommand(r *reaper, spec execSpec) (*command, error) {
	if err := checkDir(spec.dir); err != nil {
		return nil, err
	}
	path, err := lookPath(spec.argv[0], envValue(spec.env, "PATH"), spec.dir)
	if err != nil {
		return nil, err
	}
	if spec.tty {
		return startOnPTY(r, spec, path)
	}
	return startWithPipes(r, spec, path)
}

// startWithPipes runs the command in a process group of its own, so that
// signals and the kill of a session reach what it started too.
func startWithPipes(r *reaper, spec execSpec, path string) (*command, error) {
	var mine, theirs []*os.File
	for range 3 {
		pr, pw, err := os.Pipe()
		if err != nil {
			closeFiles(append(mine, theirs...))
			return nil, fmt.Errorf("make pipes: %w", err)
		}
		if len(theirs) == 0 { // stdin: the command reads
			mine, theirs = append(mine, pw), append(theirs, pr)
		} else {
			mine, theirs = append(mine, pr), append(theirs, pw)
		}
	}
	attr := &os.ProcAttr{Dir: spec.dir, Env: spec.env, Files: theirs, Sys: &syscall.SysProcAttr{Setpgid: true, Credential: spec.cred}}
	proc, status, err := r.start(path, spec.argv, attr)
	closeFiles(theirs)
	if err != nil {
		closeFiles(mine)
		return nil, startFailure(path, err)
	}
	return &command{r: r, proc: proc, status: status, stdin: mine[0],
		outputs: []output{{mine[1], session.Stdout}, {mine[2], session.Stderr}}}, nil
}

// startOnPTY runs the command as the leader of a new session whose
// controlling terminal is a new PTY.
func startOnPTY(r *reaper, spec execSpec, path string) (*command, error) {
	master, tty, err := openPTY(spec.window)
	if err != nil {
		return nil, err
	}
	attr := &os.ProcAttr{Dir: spec.dir, Env: spec.env, Files: []*os.File{tty, tty, tty},
		Sys: &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Credential: spec.cred}}
	proc, status, err := r.start(path, spec.argv, attr)
	// Only the command holds the terminal: the master reads end-of-file
	// (EIO) once it and what it started have closed it.
	tty.Close()
	if err != nil {
		master.Close()
		return nil, startFailure(path, err)
	}
	return &command{r: r, proc: proc, status: status, stdin: master, pty: master,
		outputs: []output{{master, session.Stdout}}}, nil
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// serve runs the session until the command has exited and its output is
// drained, and sends its Exit frame; or until the host goes away, when
// it kills the command's process group. It returns with every goroutine
// it started ended and every file closed.
//
// ended is told the status first: its record is then on its way to the
// host before the host learns of the end (and may end the guest).
func (c *command) serve(conn net.Conn, w *session.Writer, ended func(session.ExitStatus)) (session.ExitStatus, error) {
	defer c.proc.Release()
	// Why the host is gone: a failed read of its frames or write of the
	// output. Each goroutine sends at most once.
	gone := make(chan error, 1+len(c.outputs))
	inputDone := make(chan struct{})
	go func() {
		defer close(inputDone)
		gone <- c.input(conn)
	}()
	var exited atomic.Bool
	drained := c.copyOutputs(w, &exited, gone)

	ws, hostErr := c.wait(gone)
	exited.Store(true)
	for _, o := range c.outputs {
		o.f.SetReadDeadline(time.Now().Add(drainIdle))
	}
	if hostErr == nil {
		select {
		case <-drained:
		case hostErr = <-gone:
		}
	}
	if hostErr != nil {
		// Output writes would wait for a host that no longer reads.
		conn.SetWriteDeadline(time.Now())
	}
	<-drained

	code, sig := exitStatus(ws)
	st := session.ExitStatus{Code: code, Signal: sig}
	ended(st)
	if hostErr == nil {
		hostErr = w.WriteJSON(session.Exit, st)
	}
	// End the input: its read of the host, or its write to an input that
	// nothing reads.
	conn.SetReadDeadline(time.Now())
	c.stdin.Close()
	<-inputDone
	for _, o := range c.outputs {
		o.f.Close()
	}
	return st, hostErr
}

// copyOutputs starts copying each output to the host; the returned
// channel is closed when all have stopped.
func (c *command) copyOutputs(w *session.Writer, exited *atomic.Bool, gone chan<- error) <-chan struct{} {
	var wg sync.WaitGroup
	for _, o := range c.outputs {
		wg.Go(func() {
			if err := o.copy(w, exited); err != nil {
				gone <- err
			}
		})
	}
	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()
	return drained
}

// wait returns the command's status; if the host goes first, it kills
// the command and says why.
func (c *command) wait(gone <-chan error) (unix.WaitStatus, error) {
	select {
	case ws := <-c.status:
		return ws, nil
	case err := <-gone:
		c.r.kill(c.proc.Pid)
		return <-c.status, err
	}
}

// input applies the host's frames until its connection fails, which
// before the command's end means that the host is gone (it never
// half-closes). The command's input is written by a goroutine of its
// own, behind a bounded queue, so that a command that does not read its
// input holds up only later input, never a signal, a resize or the
// host's leaving.
func (c *command) input(conn net.Conn) error {
	feed := make(chan []byte, stdinQueue)
	defer close(feed)
	go c.feedStdin(feed)
	r := session.NewReader(conn)
	for {
		f, err := r.Next()
		if err != nil {
			return fmt.Errorf("the host left: %w", err)
		}
		switch f.Kind {
		case session.Stdin:
			if len(f.Payload) > 0 {
				feed <- bytes.Clone(f.Payload)
			}
		case session.StdinEOF:
			feed <- nil
		case session.Resize:
			var size session.WindowSize
			if c.pty != nil && json.Unmarshal(f.Payload, &size) == nil && size.Rows > 0 && size.Cols > 0 {
				setWindow(c.pty, size)
			}
		case session.Signal:
			if len(f.Payload) == 1 && f.Payload[0] >= 1 && f.Payload[0] <= 64 {
				c.r.signalGroup(c.proc.Pid, unix.Signal(f.Payload[0]))
			}
		}
	}
}

// stdinQueue bounds the input frames queued for a command that is not
// reading them (64 KiB each at most).
const stdinQueue = 64

// feedStdin writes the queued input to the command; nil is the end of
// input. Once the input is closed or broken, the rest is dropped.
func (c *command) feedStdin(feed <-chan []byte) {
	stdin := c.stdin
	for p := range feed {
		if stdin == nil {
			continue
		}
		switch {
		case p != nil:
			if _, err := stdin.Write(p); err != nil {
				stdin = nil
			}
		case c.pty != nil:
			// A terminal has no end of input; ^D is what a user types.
			if _, err := stdin.Write([]byte{0x04}); err != nil {
				stdin = nil
			}
		default:
			stdin.Close()
			stdin = nil
		}
	}
}

// copy sends the output as frames until end-of-file or, once the command
// has exited, until a read waits drainIdle with nothing to read. Its
// error is a failed write: the host is gone.
func (o output) copy(w *session.Writer, exited *atomic.Bool) error {
	buf := make([]byte, 32<<10)
	for {
		start := time.Now()
		if exited.Load() {
			o.f.SetReadDeadline(start.Add(drainIdle))
		}
		n, err := o.f.Read(buf)
		if n > 0 {
			if werr := w.Write(o.kind, buf[:n]); werr != nil {
				return fmt.Errorf("send the command's %s: %w", o.kind, werr)
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded) && time.Since(start) < drainIdle:
			// The deadline was set as the command exited, before this
			// read began: the read is owed a full wait.
		default:
			// End-of-file, the EIO of a PTY whose terminal is closed, or
			// silence after the command's exit.
			return nil
		}
	}
}
