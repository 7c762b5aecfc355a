package session

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestFramesRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	big := bytes.Repeat([]byte("x"), MaxPayload+10)
	w.Write(Stdout, []byte("hello"))
	w.Write(StdinEOF, nil)
	w.Write(Stderr, big)
	w.WriteJSON(Exit, ExitStatus{Code: 3})
	r := NewReader(&buf)
	var got []string
	for {
		f, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, f.Kind.String()+":"+string(rune('0'+len(f.Payload)%10)))
	}
	// The big payload is split at MaxPayload.
	want := "stdout:5 stdin-eof:0 stderr:6 stderr:0 exit:" + string(rune('0'+len(`{"code":3}`)%10))
	if strings.Join(got, " ") != want {
		t.Errorf("frames %q, want %q", strings.Join(got, " "), want)
	}
}

func TestReaderRefusesBadFrames(t *testing.T) {
	huge := []byte{'o', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(huge[1:], MaxPayload+1)
	if _, err := NewReader(bytes.NewReader(huge)).Next(); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("huge frame: %v", err)
	}
	if _, err := NewReader(bytes.NewReader([]byte{'o', 0, 0})).Next(); err == nil || errors.Is(err, io.EOF) {
		t.Errorf("truncated header: %v", err)
	}
	if _, err := NewReader(bytes.NewReader([]byte{'o', 0, 0, 0, 9, 'a'})).Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated payload: %v", err)
	}
}

func FuzzReader(f *testing.F) {
	f.Add([]byte{'o', 0, 0, 0, 2, 'h', 'i', 'x', 0, 0, 0, 0})
	f.Add([]byte{'x', 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b))
		for range 1000 {
			fr, err := r.Next()
			if err != nil {
				return
			}
			if len(fr.Payload) > MaxPayload {
				t.Fatalf("payload of %d bytes", len(fr.Payload))
			}
		}
	})
}

// fakeGuest answers a session on the other end of a pipe: it echoes stdin
// to stdout until StdinEOF, then exits with the number of bytes.
func fakeGuest(t *testing.T, conn net.Conn) {
	defer conn.Close()
	r, w := NewReader(conn), NewWriter(conn)
	n := 0
	for {
		f, err := r.Next()
		if err != nil {
			return
		}
		switch f.Kind {
		case Stdin:
			n += len(f.Payload)
			w.Write(Stdout, f.Payload)
		case StdinEOF:
			w.Write(Stderr, []byte("done"))
			w.WriteJSON(Exit, ExitStatus{Code: n % 256})
			return
		}
	}
}

func TestRunEchoes(t *testing.T) {
	host, guest := net.Pipe()
	go fakeGuest(t, guest)
	var out, errb bytes.Buffer
	st, err := Run(host, Stdio{Stdin: strings.NewReader("abc"), Stdout: &out, Stderr: &errb})
	if err != nil || st.Code != 3 || out.String() != "abc" || errb.String() != "done" {
		t.Errorf("Run = %+v, %v; out %q err %q", st, err, out.String(), errb.String())
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

// Input that fails ends the session with that error, not a made-up end
// of input.
func TestRunInputFailure(t *testing.T) {
	host, guest := net.Pipe()
	go fakeGuest(t, guest)
	done := make(chan error, 1)
	go func() {
		_, err := Run(host, Stdio{Stdin: failingReader{}, Stdout: io.Discard})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "disk on fire") {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not end")
	}
}

func TestRunWithoutExit(t *testing.T) {
	host, guest := net.Pipe()
	go func() { NewReader(guest).Next(); guest.Close() }()
	if _, err := Run(host, Stdio{Stdin: strings.NewReader("x")}); !errors.Is(err, ErrNoExit) {
		t.Errorf("Run = %v, want ErrNoExit", err)
	}
}

func TestExitWatch(t *testing.T) {
	var frames bytes.Buffer
	w := NewWriter(&frames)
	w.Write(Stdout, []byte("out"))
	w.Write(StdinEOF, nil)                          // an empty frame before the Exit
	w.Write(Stderr, []byte{byte(Exit), 0, 0, 0, 0}) // a payload that looks like an Exit frame
	w.WriteJSON(Exit, ExitStatus{Code: 3})
	b := frames.Bytes()
	exited := func(x *ExitWatch) bool {
		select {
		case <-x.Exited():
			return true
		default:
			return false
		}
	}
	// Every way of cutting the stream into writes: one byte short of the
	// end the Exit frame has not come, at the end it has.
	for cut := 1; cut < len(b); cut++ {
		var out bytes.Buffer
		x := NewExitWatch(&out)
		x.Write(b[:cut])
		if cut < len(b)-1 {
			x.Write(b[cut : len(b)-1])
		}
		if exited(x) {
			t.Fatalf("cut at %d: exited before the Exit frame's last byte", cut)
		}
		x.Write(b[len(b)-1:])
		if !exited(x) {
			t.Fatalf("cut at %d: not exited after the Exit frame", cut)
		}
		if !bytes.Equal(out.Bytes(), b) {
			t.Fatalf("cut at %d: relayed %q, want %q", cut, out.Bytes(), b)
		}
	}
}

// The Exit frame is noted before it is written, so a host that has read
// it and leaves always finds it noted; and noted also when the host left
// before it could be written (the command has ended all the same).
func TestExitWatchNotesTheExitBeforeWritingIt(t *testing.T) {
	var frames bytes.Buffer
	NewWriter(&frames).WriteJSON(Exit, ExitStatus{})
	var x *ExitWatch
	noted := false
	x = NewExitWatch(writerFunc(func(p []byte) (int, error) {
		select {
		case <-x.Exited():
			noted = true
		default:
		}
		return 0, io.ErrClosedPipe
	}))
	if _, err := x.Write(frames.Bytes()); err == nil {
		t.Fatal("no error from a failing writer")
	}
	if !noted {
		t.Fatal("the Exit frame was written before it was noted")
	}
}

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
