// Package agentlink is the channel between the daemon and a guest's
// agent: its wire format (wire.go), which both ends use, and the host
// side, which waits for the agent's readiness and calls its methods.
//
// It knows nothing of VMs, engines or state: it is given a Transport that
// reaches one guest's byte stream (QEMU's virtio-serial socket today,
// Firecracker's vsock later) and nothing else. Readiness is the agent's
// Hello and nothing else: no sleeps, no guessing from the console.
package agentlink

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"

	"banger/logging"
	"banger/rpc"
)

// Transport opens the raw byte stream to one guest's agent.
type Transport interface {
	Dial(ctx context.Context) (net.Conn, error)
}

// UnixSocket is the transport of QEMU's virtio-serial port: the Unix
// socket of the port's chardev, in the VM's instance directory.
type UnixSocket string

// Dial connects to the socket. A socket that does not exist yet is waited
// for (within ctx); one that exists with nobody listening means its QEMU
// is gone, and fails at once.
func (s UnixSocket) Dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	backoff := 5 * time.Millisecond
	for {
		c, err := d.DialContext(ctx, "unix", string(s))
		if err == nil {
			return c, nil
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("connect to the agent's socket %s: nobody listens (has the VM exited?): %w", s, err)
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.EAGAIN) {
			return nil, fmt.Errorf("connect to the agent's socket: %w", err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("connect to the agent's socket %s: %w", s, ctx.Err())
		case <-t.C:
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// MaxHelloLine bounds the Hello line.
const MaxHelloLine = 4096

// Link is an open channel to a guest's agent that has said it is ready.
type Link struct {
	hello   Hello
	conn    net.Conn
	session *yamux.Session
}

// Wait connects to the agent socket of a QEMU instance and returns once
// the agent has said it is ready, or with ctx's error.
func Wait(ctx context.Context, agentSocket string) (*Link, error) {
	return Open(ctx, UnixSocket(agentSocket))
}

// Open reaches the agent through t, does the handshake (wire.go) and
// starts the session. It returns when the agent has sent its Hello, which
// may be long after the transport connected: during a boot, the port's
// bytes wait in QEMU until the agent opens it.
func Open(ctx context.Context, t Transport) (*Link, error) {
	conn, err := t.Dial(ctx)
	if err != nil {
		return nil, err
	}
	hello, br, err := handshake(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	session, err := yamux.Client(bufferedConn{Reader: br, Conn: conn}, SessionConfig(logging.From(ctx)))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start the agent session: %w", err)
	}
	return &Link{hello: hello, conn: conn, session: session}, nil
}

// handshake writes a reset frame and reads until the Hello that echoes
// its nonce. It returns the reader to go on with: it may hold bytes past
// the Hello.
func handshake(ctx context.Context, conn net.Conn) (Hello, *bufio.Reader, error) {
	// Canceling ctx interrupts the reads with a deadline in the past.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	fail := func(err error) (Hello, *bufio.Reader, error) {
		if ctx.Err() != nil {
			return Hello{}, nil, fmt.Errorf("wait for the agent: %w", ctx.Err())
		}
		if errors.Is(err, io.EOF) {
			return Hello{}, nil, errors.New("wait for the agent: the channel closed before the agent was ready (has the VM exited? its console log says why)")
		}
		return Hello{}, nil, fmt.Errorf("wait for the agent: %w", err)
	}
	var nonce [8]byte
	rand.Read(nonce[:])
	if _, err := conn.Write(ResetFrame(nonce)); err != nil {
		return fail(err)
	}
	want, _ := ParseReset(ResetFrame(nonce))
	br := bufio.NewReader(conn)
	for {
		line, err := nextHello(br)
		if err != nil {
			return fail(err)
		}
		var h Hello
		if err := json.Unmarshal(line, &h); err != nil || h.Nonce != want {
			continue // another session's Hello, or noise that looked like one
		}
		if !h.Ready {
			return fail(errors.New("the agent says it is not ready"))
		}
		if !stop() {
			// ctx ended just now, and the deadline is set or about to be.
			return fail(ctx.Err())
		}
		return h, br, nil
	}
}

// nextHello skips to the next HelloPrefix and returns the line it starts.
func nextHello(br *bufio.Reader) ([]byte, error) {
	prefix := []byte(HelloPrefix)
	matched := 0
	for matched < len(prefix) {
		b, err := br.ReadByte()
		if err != nil {
			return nil, err
		}
		switch {
		case b == prefix[matched]:
			matched++
		case b == prefix[0]: // '{' occurs only first in the prefix
			matched = 1
		default:
			matched = 0
		}
	}
	line := append([]byte{}, prefix...)
	for len(line) < MaxHelloLine {
		b, err := br.ReadByte()
		if err != nil {
			return nil, err
		}
		if b == '\n' {
			return line, nil
		}
		line = append(line, b)
	}
	return line, nil // too long to be a Hello; the caller's decode rejects it
}

// Hello is what the agent said when it became ready.
func (l *Link) Hello() Hello { return l.hello }

// Call makes one rpc call to the agent on a stream of its own.
func (l *Link) Call(ctx context.Context, method string, params, result any) error {
	stream, err := l.session.OpenStream()
	if err != nil {
		return fmt.Errorf("call %s: open a stream to the agent: %w", method, err)
	}
	return rpc.CallConn(ctx, stream, method, params, result)
}

// OpenSession starts a stream method (agent.exec, agent.untar) on a
// stream of its own and returns the stream, which then carries session
// frames. ctx bounds the start only.
func (l *Link) OpenSession(ctx context.Context, method string, params any) (*rpc.Stream, error) {
	stream, err := l.session.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("call %s: open a stream to the agent: %w", method, err)
	}
	return rpc.OpenStreamConn(ctx, stream, method, params, nil)
}

// Signal sends sig to the command of the exec session opID.
func (l *Link) Signal(ctx context.Context, opID string, sig int) error {
	return l.Call(ctx, MethodSignal, SignalParams{OpID: opID, Signal: sig}, nil)
}

// Ports lists the guest's listening sockets.
func (l *Link) Ports(ctx context.Context) ([]Port, error) {
	var r PortsResult
	err := l.Call(ctx, MethodPorts, nil, &r)
	return r.Ports, err
}

// Ping asks the agent how it is.
func (l *Link) Ping(ctx context.Context) (PingResult, error) {
	var r PingResult
	err := l.Call(ctx, MethodPing, nil, &r)
	return r, err
}

// PowerOff asks the agent to power the guest off, and waits for the
// channel to close, which it does when QEMU exits with the guest.
func (l *Link) PowerOff(ctx context.Context) error {
	if err := l.Call(ctx, MethodPowerOff, nil, nil); err != nil {
		return err
	}
	select {
	case <-l.session.CloseChan():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the guest to power off: %w", ctx.Err())
	}
}

// Done is closed when the channel is gone: the VM exited, or Close.
func (l *Link) Done() <-chan struct{} { return l.session.CloseChan() }

// Close ends the session and the connection. The agent notices, and
// answers the next host that connects.
func (l *Link) Close() error {
	err := l.session.Close()
	l.conn.Close()
	return err
}

// bufferedConn reads through the handshake's reader, which may already
// hold the first bytes of the session.
type bufferedConn struct {
	*bufio.Reader
	net.Conn
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.Reader.Read(p) }
