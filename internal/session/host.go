package session

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
)

// Stdio is the host end of a session: where its input comes from and its
// output goes, and the events a terminal sends.
type Stdio struct {
	// Stdin is sent as Stdin frames, then StdinEOF at its end; nil sends
	// StdinEOF at once.
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Resize and Signal, when set, are forwarded while the session runs.
	Resize <-chan WindowSize
	Signal <-chan int
}

// ErrNoExit is a session whose connection ended before its Exit frame:
// the VM, the agent or the daemon went away.
var ErrNoExit = errors.New("the session ended without an exit status (did the VM stop?)")

// Run drives a session on conn until the guest's Exit frame and returns
// its status. It closes conn. An output writer that fails ends the
// session (the guest kills the command).
func Run(conn net.Conn, s Stdio) (ExitStatus, error) {
	defer conn.Close()
	w := NewWriter(conn)
	done := make(chan struct{})
	defer close(done)
	inputErr := make(chan error, 1)
	go sendInput(conn, w, s, done, inputErr)

	r := NewReader(conn)
	for {
		f, err := r.Next()
		if err != nil {
			select {
			case ierr := <-inputErr:
				return ExitStatus{}, fmt.Errorf("session: read the input: %w", ierr)
			default:
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
				return ExitStatus{}, ErrNoExit
			}
			return ExitStatus{}, fmt.Errorf("session: %w", err)
		}
		switch f.Kind {
		case Stdout, Stderr:
			out := s.Stdout
			if f.Kind == Stderr {
				out = s.Stderr
			}
			if out == nil {
				continue
			}
			if _, err := out.Write(f.Payload); err != nil {
				return ExitStatus{}, fmt.Errorf("session: write the command's %s: %w", f.Kind, err)
			}
		case Exit:
			var st ExitStatus
			if err := json.Unmarshal(f.Payload, &st); err != nil {
				return ExitStatus{}, fmt.Errorf("session: bad exit status: %w", err)
			}
			return st, nil
		default:
			return ExitStatus{}, fmt.Errorf("session: unexpected %s frame from the guest", f.Kind)
		}
	}
}

// sendInput copies stdin and the terminal's events to the guest until
// done. A write error means the session is over; Run sees why. Input
// that fails (not one that ends) ends the session: the guest must not
// take half of it for all of it.
func sendInput(conn net.Conn, w *Writer, s Stdio, done <-chan struct{}, inputErr chan<- error) {
	go func() {
		if s.Stdin != nil {
			_, err := io.Copy(w.Stream(Stdin), s.Stdin)
			var werr *streamWriteError
			switch {
			case errors.As(err, &werr):
				return // the session is over; Run says why
			case err == nil, errors.Is(err, syscall.EBADF):
				// A closed standard input (cmd <&-) is an empty one.
			default:
				inputErr <- err
				conn.Close()
				return
			}
		}
		w.Write(StdinEOF, nil)
	}()
	for {
		select {
		case <-done:
			return
		case ws, ok := <-s.Resize:
			if !ok {
				s.Resize = nil
				continue
			}
			if w.WriteJSON(Resize, ws) != nil {
				return
			}
		case sig, ok := <-s.Signal:
			if !ok {
				s.Signal = nil
				continue
			}
			if w.Write(Signal, []byte{byte(sig)}) != nil {
				return
			}
		}
	}
}
