package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"banger/internal/agentlink"
	"banger/internal/session"
	"banger/rpc"
)

// testAgent serves the agent's methods on a Unix socket, its commands
// started through a reaper that waits only for them: the test process
// has other children, whose owners wait for them.
type testAgent struct {
	sock string
}

func newTestAgent(t *testing.T) *testAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := newReaper(false)
	reaped := make(chan struct{})
	go func() { r.run(ctx); close(reaped) }()
	a := &agent{log: zerolog.Nop(), reaper: r, poweroff: make(chan string, 1)}
	srv := &rpc.Server{Methods: a.methods(), Streams: a.streams(), TrustTransport: true, Authorize: rpc.AllowTrusted, Logger: zerolog.Nop()}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { srv.Serve(ln); close(served) }()
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		<-served
		cancel()
		<-reaped
	})
	return &testAgent{sock: sock}
}

// open starts a session method.
func (a *testAgent) open(method string, params any) (*rpc.Stream, error) {
	conn, err := net.Dial("unix", a.sock)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return rpc.OpenStreamConn(ctx, conn, method, params, nil)
}

// collected is a command's output.
type collected struct{ stdout, stderr bytes.Buffer }

func (a *testAgent) exec(t *testing.T, p session.Exec, stdin io.Reader) (session.ExitStatus, *collected) {
	t.Helper()
	st, out, err := a.execStdio(p, session.Stdio{Stdin: stdin})
	if err != nil {
		t.Fatalf("exec %v: %v", p.Argv, err)
	}
	return st, out
}

func (a *testAgent) execStdio(p session.Exec, stdio session.Stdio) (session.ExitStatus, *collected, error) {
	out := &collected{}
	s, err := a.open(agentlink.MethodExec, p)
	if err != nil {
		return session.ExitStatus{}, out, err
	}
	if stdio.Stdout == nil {
		stdio.Stdout = &out.stdout
	}
	stdio.Stderr = &out.stderr
	st, err := session.Run(s, stdio)
	return st, out, err
}

func TestExecSession(t *testing.T) {
	a := newTestAgent(t)
	sh := func(script string) session.Exec { return session.Exec{Argv: []string{"sh", "-c", script}} }

	t.Run("streams and code", func(t *testing.T) {
		st, out := a.exec(t, sh("echo out; echo err >&2; exit 7"), nil)
		if st != (session.ExitStatus{Code: 7}) || out.stdout.String() != "out\n" || out.stderr.String() != "err\n" {
			t.Errorf("status %+v stdout %q stderr %q", st, out.stdout.String(), out.stderr.String())
		}
	})
	t.Run("stdin to stdout", func(t *testing.T) {
		data := make([]byte, 3<<20+17)
		rand.Read(data)
		st, out := a.exec(t, session.Exec{Argv: []string{"cat"}}, bytes.NewReader(data))
		if st.Code != 0 || !bytes.Equal(out.stdout.Bytes(), data) {
			t.Errorf("status %+v, %d bytes back of %d, equal %v", st, out.stdout.Len(), len(data), bytes.Equal(out.stdout.Bytes(), data))
		}
	})
	t.Run("killed by a signal", func(t *testing.T) {
		if st, _ := a.exec(t, sh("kill -9 $$"), nil); st != (session.ExitStatus{Code: 137, Signal: 9}) {
			t.Errorf("status %+v", st)
		}
	})
	t.Run("signal frame", func(t *testing.T) {
		sig := make(chan int, 1)
		sig <- 15
		st, _, err := a.execStdio(session.Exec{Argv: []string{"sleep", "100"}}, session.Stdio{Signal: sig})
		if err != nil || st != (session.ExitStatus{Code: 143, Signal: 15}) {
			t.Errorf("status %+v, %v", st, err)
		}
	})
	t.Run("environment and directory", func(t *testing.T) {
		p := sh(`echo "$PATH|$HOME|$USER|$LOGNAME|${TERM-unset}|$FOO|$(pwd)"`)
		p.Env = []string{"FOO=bar", "USER=nobody"}
		p.Dir = "/tmp"
		st, out := a.exec(t, p, nil)
		want := defaultPath + "|/root|nobody|root|unset|bar|/tmp\n"
		if st.Code != 0 || out.stdout.String() != want {
			t.Errorf("status %+v, got %q, want %q", st, out.stdout.String(), want)
		}
	})
	t.Run("cannot start", func(t *testing.T) {
		notExec := filepath.Join(t.TempDir(), "script")
		os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)
		for _, c := range []struct {
			p    session.Exec
			code int
			msg  string
		}{
			{session.Exec{Argv: []string{"no-such-command-here"}}, 127, "no-such-command-here: command not found"},
			{session.Exec{Argv: []string{"/no/such/file"}}, 127, "/no/such/file: no such file or directory"},
			{session.Exec{Argv: []string{notExec}}, 126, notExec + ": permission denied"},
			{session.Exec{Argv: []string{"/tmp"}}, 126, "/tmp: is a directory"},
			{session.Exec{Argv: []string{"true"}, Dir: "/no/such/dir"}, 126, "working directory /no/such/dir: no such file or directory"},
			{session.Exec{Argv: []string{"true"}, Env: []string{"PATH=/nowhere"}}, 127, "true: command not found"},
		} {
			st, out := a.exec(t, c.p, nil)
			if st.Code != c.code || st.Error != c.msg || out.stdout.Len()+out.stderr.Len() != 0 {
				t.Errorf("%v: status %+v, want code %d and %q", c.p.Argv, st, c.code, c.msg)
			}
		}
	})
	t.Run("invalid params", func(t *testing.T) {
		for _, p := range []session.Exec{{}, {Argv: []string{"true"}, Dir: "tmp"}, {Argv: []string{"true"}, Env: []string{"FOO"}}} {
			if _, err := a.open(agentlink.MethodExec, p); rpc.CodeOf(err) != rpc.CodeInvalidParams {
				t.Errorf("%+v: %v, want invalid_params", p, err)
			}
		}
		if _, err := a.open(agentlink.MethodUntar, session.Untar{Dir: "rel"}); rpc.CodeOf(err) != rpc.CodeInvalidParams {
			t.Errorf("untar into a relative dir: %v", err)
		}
	})
	t.Run("background process keeps the output open", func(t *testing.T) {
		start := time.Now()
		st, out := a.exec(t, sh("sleep 3 & echo hi"), nil)
		if d := time.Since(start); st.Code != 0 || out.stdout.String() != "hi\n" || d > 2*time.Second {
			t.Errorf("status %+v, output %q, after %s", st, out.stdout.String(), d)
		}
		start = time.Now()
		st, out = a.exec(t, session.Exec{Argv: []string{"sh", "-c", "trap '' HUP; sleep 3 & echo hi"}, TTY: true}, nil)
		if d := time.Since(start); st.Code != 0 || out.stdout.String() != "hi\r\n" || d > 2*time.Second {
			t.Errorf("on a tty: status %+v, output %q, after %s", st, out.stdout.String(), d)
		}
	})
	t.Run("tty", func(t *testing.T) {
		p := session.Exec{Argv: []string{"sh", "-c", "tty; stty size; echo $TERM"}, TTY: true, Window: &session.WindowSize{Rows: 30, Cols: 100}}
		st, out := a.exec(t, p, nil)
		if st.Code != 0 || !regexp.MustCompile(`^/dev/pts/\d+\r\n30 100\r\nxterm-256color\r\n$`).MatchString(out.stdout.String()) {
			t.Errorf("status %+v, output %q", st, out.stdout.String())
		}
	})
	t.Run("tty resize", func(t *testing.T) {
		resize := make(chan session.WindowSize)
		in, typist := io.Pipe()
		go func() {
			resize <- session.WindowSize{Rows: 40, Cols: 120}
			// The resize frame was taken to be sent; the line follows it.
			time.Sleep(100 * time.Millisecond)
			typist.Write([]byte("\n"))
			typist.Close()
		}()
		p := session.Exec{Argv: []string{"sh", "-c", "read x; stty size"}, TTY: true}
		st, out, err := a.execStdio(p, session.Stdio{Stdin: in, Resize: resize})
		if err != nil || st.Code != 0 || !strings.Contains(out.stdout.String(), "40 120") {
			t.Errorf("status %+v, %v, output %q", st, err, out.stdout.String())
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				st, out, err := a.execStdio(sh(fmt.Sprintf("echo %d; exit %d", i, 10+i)), session.Stdio{})
				if err != nil || st.Code != 10+i || out.stdout.String() != fmt.Sprintf("%d\n", i) {
					t.Errorf("session %d: %+v, %v, %q", i, st, err, out.stdout.String())
				}
			})
		}
		wg.Wait()
	})
	t.Run("host leaves", func(t *testing.T) {
		s, err := a.open(agentlink.MethodExec, sh("echo $$; exec sleep 1000"))
		if err != nil {
			t.Fatal(err)
		}
		line := make(chan string, 1)
		done := make(chan error, 1)
		go func() { _, err := session.Run(s, session.Stdio{Stdout: &lineWriter{line: line}}); done <- err }()
		pid, _ := strconv.Atoi(<-line)
		s.Close()
		if err := <-done; err == nil {
			t.Error("the session ended well without its host")
		}
		deadline := time.Now().Add(5 * time.Second)
		for syscall.Kill(pid, 0) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("process %d lives on without its host", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// lineWriter hands over its first line.
type lineWriter struct {
	buf  bytes.Buffer
	line chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if l, _, ok := strings.Cut(w.buf.String(), "\n"); ok && w.line != nil {
		w.line <- l
		w.line = nil
	}
	return len(p), nil
}

// TestExecLeaksNothing runs sessions of every kind, ending every way, and
// checks that the agent is left with the goroutines and descriptors it
// had.
func TestExecLeaksNothing(t *testing.T) {
	a := newTestAgent(t)
	round := func() {
		a.execStdio(session.Exec{Argv: []string{"sh", "-c", "echo x; sleep 1 & exit 3"}}, session.Stdio{})
		a.execStdio(session.Exec{Argv: []string{"sh", "-c", "echo x"}, TTY: true}, session.Stdio{})
		a.execStdio(session.Exec{Argv: []string{"no-such-command"}}, session.Stdio{})
		a.execStdio(session.Exec{Argv: []string{"cat"}}, session.Stdio{Stdin: strings.NewReader("abc")})
		s, err := a.open(agentlink.MethodExec, session.Exec{Argv: []string{"sleep", "100"}, TTY: true})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		s.Close()
	}
	round() // the first round starts what stays (the poller, timers)
	time.Sleep(300 * time.Millisecond)
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)
	for range 3 {
		round()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		g, f := runtime.NumGoroutine(), openFDs(t)
		if g <= goroutines && f <= fds {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines %d (were %d), descriptors %d (were %d)\n%s", g, goroutines, f, fds, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func openFDs(t *testing.T) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

func TestReaperDeliversQuickExits(t *testing.T) {
	r := newReaper(false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.run(ctx)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			p, status, err := r.start("/bin/sh", []string{"sh", "-c", fmt.Sprintf("exit %d", i)}, &os.ProcAttr{})
			if err != nil {
				t.Error(err)
				return
			}
			defer p.Release()
			select {
			case ws := <-status:
				if code, _ := exitStatus(ws); code != i {
					t.Errorf("exit %d reported as %d", i, code)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("no status for exit %d", i)
			}
		})
	}
	wg.Wait()
	if err := r.signalGroup(1, 0); err == nil {
		t.Error("signalGroup reached a process the reaper did not start")
	}
	if _, _, err := r.start("/no/such", []string{"x"}, &os.ProcAttr{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("start of a missing file: %v", err)
	}
}
