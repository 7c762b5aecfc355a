// Package session is the frame format of banger's streaming sessions:
// a command run in a guest (exec, shell) and a tar stream unpacked in one
// (the workspace copy). Three applets speak it: the client to the daemon
// on the daemon's stream socket, the daemon to the agent on a yamux
// stream, and the agent. Both legs carry the same frames, so the daemon
// passes them through without decoding them.
//
// A session starts like any rpc call (PROTOCOL.md's request and response
// objects); after an ok response the connection carries frames both ways
// until the guest side sends Exit and closes. A frame is one kind byte, a
// big-endian uint32 payload length and the payload:
//
//	host -> guest: Stdin (data), StdinEOF, Resize (WindowSize as JSON),
//	               Signal (one byte: the signal number)
//	guest -> host: Stdout, Stderr (data), Exit (ExitStatus as JSON), last
//
// The host ends a session early by closing the connection: the guest then
// kills what the session started. It never half-closes.
package session

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Kind is a frame's type.
type Kind byte

// Frame kinds.
const (
	Stdin    Kind = 'i'
	StdinEOF Kind = 'I'
	Resize   Kind = 'r'
	Signal   Kind = 's'
	Stdout   Kind = 'o'
	Stderr   Kind = 'e'
	Exit     Kind = 'x'
)

func (k Kind) String() string {
	switch k {
	case Stdin:
		return "stdin"
	case StdinEOF:
		return "stdin-eof"
	case Resize:
		return "resize"
	case Signal:
		return "signal"
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	case Exit:
		return "exit"
	}
	return fmt.Sprintf("kind(%#x)", byte(k))
}

// MaxPayload bounds one frame's payload; longer data is split.
const MaxPayload = 64 << 10

const headerSize = 5

// ErrFrameTooLarge is a frame whose length exceeds MaxPayload: the peer
// does not speak this format.
var ErrFrameTooLarge = errors.New("session: frame larger than the format allows")

// Frame is one decoded frame. Payload is valid until the next Next.
type Frame struct {
	Kind    Kind
	Payload []byte
}

// Reader decodes frames.
type Reader struct {
	r   *bufio.Reader
	buf []byte
}

// NewReader reads frames from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, MaxPayload+headerSize)}
}

// Next returns the next frame; io.EOF at a clean end between frames.
func (r *Reader) Next() (Frame, error) {
	var hdr [headerSize]byte
	if _, err := io.ReadFull(r.r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return Frame{}, fmt.Errorf("session: truncated frame header: %w", err)
		}
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxPayload {
		return Frame{}, ErrFrameTooLarge
	}
	if cap(r.buf) < int(n) {
		r.buf = make([]byte, n, MaxPayload)
	}
	p := r.buf[:n]
	if _, err := io.ReadFull(r.r, p); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, fmt.Errorf("session: truncated %s frame: %w", Kind(hdr[0]), err)
	}
	return Frame{Kind: Kind(hdr[0]), Payload: p}, nil
}

// Writer encodes frames; it is safe for concurrent use (stdout and stderr
// are copied by two goroutines).
type Writer struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

// NewWriter writes frames to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write sends p as frames of kind k, split at MaxPayload. An empty p
// sends one empty frame (StdinEOF has no payload).
func (w *Writer) Write(k Kind, p []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for first := true; first || len(p) > 0; first = false {
		chunk := p[:min(len(p), MaxPayload)]
		p = p[len(chunk):]
		// One write per frame: header and payload never interleave with
		// another goroutine's frame, and a socket sees one write.
		w.buf = append(w.buf[:0], byte(k), 0, 0, 0, 0)
		binary.BigEndian.PutUint32(w.buf[1:], uint32(len(chunk)))
		w.buf = append(w.buf, chunk...)
		if _, err := w.w.Write(w.buf); err != nil {
			return err
		}
	}
	return nil
}

// WriteJSON sends v as one frame of kind k.
func (w *Writer) WriteJSON(k Kind, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return w.Write(k, b)
}

// Stream returns an io.Writer whose writes become frames of kind k, for
// io.Copy.
func (w *Writer) Stream(k Kind) io.Writer { return stream{w, k} }

type stream struct {
	w *Writer
	k Kind
}

func (s stream) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := s.w.Write(s.k, p); err != nil {
		return 0, &streamWriteError{err}
	}
	return len(p), nil
}

// streamWriteError marks a failed frame write in io.Copy's error, apart
// from a failed read of what was copied.
type streamWriteError struct{ err error }

func (e *streamWriteError) Error() string { return e.err.Error() }
func (e *streamWriteError) Unwrap() error { return e.err }

// ExitStatus is the payload of Exit: how the session ended.
type ExitStatus struct {
	// Code is the exit code of a process that exited, or the code a shell
	// would give: 128+Signal for a process killed by a signal, 127 for a
	// command that was not found, 126 for one that could not be run.
	Code int `json:"code"`
	// Signal is the signal that killed the process, if one did.
	Signal int `json:"signal,omitempty"`
	// Error says why the session could not do its job (the command could
	// not start, the tar stream was bad); Code is then non-zero.
	Error string `json:"error,omitempty"`
}

// WindowSize is the payload of Resize, and the initial size of a PTY.
type WindowSize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// Exec is the params of agent.exec: a command to run in the guest.
type Exec struct {
	// Argv is the command; Argv[0] is looked up in the command's PATH.
	// Empty with Shell set: the guest's login shell.
	Argv []string `json:"argv,omitempty"`
	// Shell runs root's login shell (from /etc/passwd, else /bin/sh) when
	// Argv is empty.
	Shell bool `json:"shell,omitempty"`
	// Env adds to (and overrides) the guest's base environment: K=V.
	Env []string `json:"env,omitempty"`
	// Dir is the working directory, absolute, or "~" or "~/PATH" in the
	// user's home; default: the user's home (root's: /root), else /.
	Dir string `json:"dir,omitempty"`
	// User runs the command as USER[:GROUP], each a name in the guest's
	// /etc/passwd and /etc/group or a number (a number not there has
	// group 0 unless one is given); "" is root. Its home, name and shell
	// are the command's HOME, USER, LOGNAME and SHELL; its groups in
	// /etc/group, its supplementary groups.
	User string `json:"user,omitempty"`
	// TTY runs the command on a new PTY: one output stream (Stdout),
	// Resize frames honoured, Window its first size.
	TTY    bool        `json:"tty,omitempty"`
	Window *WindowSize `json:"window,omitempty"`
}

// Tar is the params of agent.tar: the Stdout frames are a tar stream of
// Path (absolute, or "~/PATH" in User's home), a file or a directory
// with what it holds, its top entry named as Path's last element; then
// Exit. Symlinks are written as symlinks, never followed; every entry is
// root's.
type Tar struct {
	Path string `json:"path"`
	User string `json:"user,omitempty"`
}

// Untar is the params of agent.untar: the Stdin frames are a tar stream
// unpacked into Dir, which is made if missing. Entries may not leave Dir.
type Untar struct {
	// Dir is absolute, or "~/PATH" in User's home.
	Dir string `json:"dir"`
	// User (as Exec's) owns what is unpacked, and the directories made
	// for it; "" is root.
	User string `json:"user,omitempty"`
	// Top, when set, is the stream's one top element (a copy of a file
	// or a directory of that name): it goes into Dir when Dir is a
	// directory, else it becomes Dir, as cp does. Entries under another
	// name are refused.
	Top string `json:"top,omitempty"`
}
