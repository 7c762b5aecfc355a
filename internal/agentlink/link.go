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
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"

	"banger/internal/printable"
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
	hello Hello
	conn  net.Conn
	mux   *yamux.Session
	// calls are the op ids of the calls made on the link, which the
	// agent's records may name (records.go).
	calls calls
}

// Wait connects to the agent socket of a QEMU instance and returns once
// the agent has said it is ready, or with ctx's error.
func Wait(ctx context.Context, agentSocket string) (*Link, error) {
	return Open(ctx, UnixSocket(agentSocket))
}

// Open reaches the agent through t, does the handshake (wire.go) and
// starts the link's mux. It returns when the agent has sent its Hello, which
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
	cfg := MuxConfig(logging.From(ctx))
	// The host opens every stream and serves none to the guest, so it
	// never accepts one: the first few a guest opens wait in the
	// backlog (each holding at most its window of the daemon's memory),
	// and yamux refuses every other at once (a reset). A stream accepted
	// and closed would be only half closed, and buffer what the guest
	// writes. The backlog also bounds the host's own opens in flight.
	cfg.AcceptBacklog = hostBacklog
	mux, err := yamux.Client(bufferedConn{Reader: br, Conn: conn}, cfg)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start the agent link's mux: %w", err)
	}
	return &Link{hello: hello, conn: conn, mux: mux}, nil
}

// hostBacklog is the host end's accept backlog: streams the guest may
// leave waiting, and streams the host may be opening at once.
const hostBacklog = 16

// replyCaps bound an agent's answer to each call, in bytes: the guest is
// untrusted, and its answers are read into the daemon's memory.
var replyCaps = map[string]int64{
	MethodPorts: 1 << 20, // maxPorts sockets
}

// defaultReplyCap bounds the answers not in replyCaps (a ping, a resume,
// the start of a session): a few fields each.
const defaultReplyCap = 64 << 10

func replyCap(method string) int64 {
	if n, ok := replyCaps[method]; ok {
		return n
	}
	return defaultReplyCap
}

// cappedConn fails a read past its cap, until uncapped: an answer read
// through it cannot be larger than the cap.
type cappedConn struct {
	net.Conn
	method string
	mu     sync.Mutex // guards left
	left   int64      // < 0: no cap any more
}

func capReads(c net.Conn, method string) *cappedConn {
	return &cappedConn{Conn: c, method: method, left: replyCap(method)}
}

func (c *cappedConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	left := c.left
	c.mu.Unlock()
	if left == 0 {
		return 0, fmt.Errorf("the guest's answer to %s is larger than %d bytes", c.method, replyCap(c.method))
	}
	if left > 0 && int64(len(p)) > left {
		p = p[:left]
	}
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	if c.left > 0 {
		c.left -= int64(n)
	}
	c.mu.Unlock()
	return n, err
}

// uncap lifts the cap: a session's frames, past its answer, are bounded
// by the session's own format.
func (c *cappedConn) uncap() {
	c.mu.Lock()
	c.left = -1
	c.mu.Unlock()
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
		if !ValidBootID(h.BootID) {
			h.BootID = "" // the guest's to say, but not in any shape
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

// ValidBootID says whether id has the shape of a Linux boot id (a UUID,
// lowercase): what a guest reports is shown and stored only so.
func ValidBootID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i, c := range id {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f'):
			return false
		}
	}
	return true
}

// Hello is what the agent said when it became ready.
func (l *Link) Hello() Hello { return l.hello }

// Call makes one rpc call to the agent on a stream of its own.
func (l *Link) Call(ctx context.Context, method string, params, result any) error {
	l.calls.add(ctx)
	stream, err := l.mux.OpenStream()
	if err != nil {
		return fmt.Errorf("call %s: open a stream to the agent: %w", method, err)
	}
	return guestError(rpc.CallConn(ctx, capReads(stream, method), method, params, result))
}

// OpenSession starts a stream method (agent.exec, agent.untar) on a
// stream of its own and returns the stream, which then carries session
// frames. ctx bounds the start only.
func (l *Link) OpenSession(ctx context.Context, method string, params any) (*rpc.Stream, error) {
	l.calls.add(ctx)
	stream, err := l.mux.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("call %s: open a stream to the agent: %w", method, err)
	}
	capped := capReads(stream, method)
	st, err := rpc.OpenStreamConn(ctx, capped, method, params, nil)
	capped.uncap()
	return st, guestError(err)
}

// agentCodes are the error codes an agent's answer may carry to the
// client. The guest is untrusted: any other (unauthorized, say, or one
// made up) would pick the client's exit code, and becomes
// operation_failed.
var agentCodes = map[string]bool{
	rpc.CodeInvalidParams: true, rpc.CodeNotFound: true, rpc.CodeTimeout: true,
	rpc.CodeCanceled: true, rpc.CodeOperationFailed: true, rpc.CodeUnknownMethod: true,
	rpc.CodeUnavailable: true, // an image's agent that does not run commands
}

// maxAgentMessage bounds an agent's error message.
const maxAgentMessage = 1024

// guestError is an agent's error answer made safe to pass on: a known
// code, and a message without control characters, bounded. Errors of
// the link itself pass as they are.
func guestError(err error) error {
	var re *rpc.ErrorResponse
	if !errors.As(err, &re) {
		return err
	}
	code := re.Code
	if !agentCodes[code] {
		code = rpc.CodeOperationFailed
	}
	return &rpc.ErrorResponse{Code: code, Message: "the guest's agent: " + printable.String(re.Message, maxAgentMessage), OpID: re.OpID}
}

// Signal sends sig to the command of the exec session opID.
func (l *Link) Signal(ctx context.Context, opID string, sig int) error {
	return l.Call(ctx, MethodSignal, SignalParams{OpID: opID, Signal: sig}, nil)
}

// maxPorts bounds a guest's list of listening sockets.
const maxPorts = 4096

// Ports lists the guest's listening sockets: those that are a TCP socket
// on an address and a port, at most maxPorts; anything else the guest
// says is dropped.
func (l *Link) Ports(ctx context.Context) ([]Port, error) {
	var r PortsResult
	if err := l.Call(ctx, MethodPorts, nil, &r); err != nil {
		return nil, err
	}
	var out []Port
	for _, p := range r.Ports {
		if len(out) == maxPorts {
			break
		}
		if a, err := netip.ParseAddr(p.Address); err == nil && (p.Proto == "tcp" || p.Proto == "tcp6") && p.Port > 0 && p.Port <= 65535 {
			p.Address = a.String()
			out = append(out, p)
		}
	}
	return out, nil
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
	case <-l.mux.CloseChan():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the guest to power off: %w", ctx.Err())
	}
}

// Done is closed when the channel is gone: the VM exited, or Close.
func (l *Link) Done() <-chan struct{} { return l.mux.CloseChan() }

// Close ends the mux and the connection. The agent notices, and
// answers the next host that connects.
func (l *Link) Close() error {
	err := l.mux.Close()
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
