package client

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/term"

	"banger/internal/session"
)

// The client's terminal during a session: raw mode for a PTY session,
// window size changes, and signals forwarded to the command.

// isTerminal reports whether f is a terminal (an *os.File on one).
func isTerminal(f any) bool {
	fd := fdOf(f)
	return fd >= 0 && term.IsTerminal(fd)
}

func fdOf(f any) int {
	if file, ok := f.(*os.File); ok {
		return int(file.Fd())
	}
	return -1
}

// terminal is a terminal put in raw mode for a PTY session.
type terminal struct {
	fd    int
	state *term.State
	once  sync.Once
	winch chan os.Signal
}

// makeRaw puts the terminal on in into raw mode: keys, Ctrl-C included,
// go to the command in the VM.
func makeRaw(in io.Reader) (*terminal, error) {
	fd := fdOf(in)
	state, err := term.MakeRaw(fd)
	if err != nil {
		return nil, fmt.Errorf("put the terminal in raw mode: %w", err)
	}
	return &terminal{fd: fd, state: state}, nil
}

// restore puts the terminal back as it was; it is safe to call twice.
func (t *terminal) restore() {
	t.once.Do(func() {
		if t.winch != nil {
			signal.Stop(t.winch)
		}
		term.Restore(t.fd, t.state)
	})
}

// resizes sends the terminal's new size on each SIGWINCH.
func (t *terminal) resizes() <-chan session.WindowSize {
	t.winch = make(chan os.Signal, 1)
	signal.Notify(t.winch, syscall.SIGWINCH)
	out := make(chan session.WindowSize, 1)
	go func() {
		for range t.winch {
			if w, h, err := term.GetSize(t.fd); err == nil {
				select {
				case out <- session.WindowSize{Rows: uint16(h), Cols: uint16(w)}:
				default: // one pending size is enough; the next replaces it
				}
			}
		}
	}()
	return out
}

// signalForwarder passes the client's signals to the command: the first
// one of a kind is forwarded, as if sent to the command; a second Ctrl-C
// (or any signal during a PTY session, where Ctrl-C is a key) ends the
// session at once.
type signalForwarder struct {
	ch      chan os.Signal
	mu      sync.Mutex
	aborted syscall.Signal
}

// forwardSignals passes signals on with send, which must not block long.
func forwardSignals(conn net.Conn, tty bool, send func(sig int)) *signalForwarder {
	f := &signalForwarder{ch: make(chan os.Signal, 4)}
	signal.Notify(f.ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	go func() {
		sent := map[os.Signal]bool{}
		for s := range f.ch {
			sig := s.(syscall.Signal)
			if tty || sent[s] {
				f.mu.Lock()
				f.aborted = sig
				f.mu.Unlock()
				conn.Close()
				continue
			}
			sent[s] = true
			go send(int(sig))
		}
	}()
	return f
}

func (f *signalForwarder) stop() {
	signal.Stop(f.ch)
	close(f.ch)
}

// interrupted is the signal that aborted the session, or 0.
func (f *signalForwarder) interrupted() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int(f.aborted)
}
