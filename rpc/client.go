package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"syscall"
	"time"
)

// Caller makes one RPC. Client and CommandClient are the two transports;
// a caller that wraps one (a client that starts its daemon first, the
// daemon's link to its helper) is one too. The typed clients
// (api.Client, privapi.Client) are built on it.
type Caller interface {
	Call(ctx context.Context, method string, params, result any) error
}

// Client calls a server on a Unix socket, one connection per call.
type Client struct {
	Socket string
	// Server (may be nil) decides from the server's credentials
	// (SO_PEERCRED) whether it is the server meant, before anything is
	// sent: a socket that another user made first must not get the
	// request. A refusal is unauthorized, and nothing was written.
	Server PeerPolicy
}

// dial connects to the socket and checks the server.
func (c *Client) dial(ctx context.Context, method string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		if cerr := ctxErr(ctx); cerr != nil {
			return nil, fmt.Errorf("call %s: %w", method, cerr)
		}
		return nil, fmt.Errorf("%w: %s: %w", ErrUnreachable, c.Socket, unwrapDial(err))
	}
	if c.Server == nil {
		return conn, nil
	}
	peer, err := peerOf(conn)
	if err == nil {
		err = c.Server(peer)
	}
	if err != nil {
		conn.Close()
		return nil, Errorf(CodeUnauthorized, "refusing the server on %s, and sending it nothing: %v", c.Socket, err)
	}
	return conn, nil
}

// Call sends method with params and decodes the result into result (which
// may be nil). The op id on ctx is forwarded. Canceling ctx closes the
// connection at once; its deadline bounds the whole exchange. A server error
// comes back as an *ErrorResponse; a socket nobody serves wraps
// ErrUnreachable.
func (c *Client) Call(ctx context.Context, method string, params, result any) error {
	req, err := encodeRequest(ctx, method, params)
	if err != nil {
		return err
	}
	conn, err := c.dial(ctx, method)
	if err != nil {
		return err
	}
	return exchangeConn(ctx, conn, method, req, result)
}

// CallConn makes one call on conn, a connection the caller opened by other
// means (a yamux stream to the guest agent), exactly as Client.Call does on
// a socket it dialed, and closes conn.
func CallConn(ctx context.Context, conn net.Conn, method string, params, result any) error {
	req, err := encodeRequest(ctx, method, params)
	if err != nil {
		conn.Close()
		return err
	}
	return exchangeConn(ctx, conn, method, req, result)
}

// exchangeConn writes req on conn, reads the response into result and
// closes conn. Canceling ctx closes conn at once; its deadline bounds the
// exchange.
func exchangeConn(ctx context.Context, conn net.Conn, method string, req []byte, result any) error {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { interrupt(conn) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}

	// A server that refuses the peer answers before reading; keep going to
	// read its answer even when our write fails.
	_, werr := conn.Write(req)
	err := decodeResponse(conn, result)
	if ctx.Err() != nil {
		return fmt.Errorf("call %s: %w", method, ctx.Err())
	}
	if err != nil && !isServerAnswer(err) {
		if cerr := ctxErr(ctx); cerr != nil {
			return fmt.Errorf("call %s: %w", method, cerr)
		}
	}
	if err != nil && werr != nil && !isServerAnswer(err) {
		return fmt.Errorf("call %s: write request: %w", method, werr)
	}
	if err != nil && !isServerAnswer(err) {
		return fmt.Errorf("call %s: %w", method, err)
	}
	return err
}

// Stream is a stream session (Server.Streams) after the request and its
// ok response, on either end: the connection, whose reads start with
// what was read past the request or response. Closing it ends the
// session.
type Stream struct {
	net.Conn
	r io.Reader
}

// newStream is conn, read from rest first, past the newline that ends
// the request or response.
func newStream(conn net.Conn, rest io.Reader) *Stream {
	return &Stream{Conn: conn, r: &skipNewline{r: io.MultiReader(rest, conn)}}
}

func (s *Stream) Read(p []byte) (int, error) { return s.r.Read(p) }

// SyscallConn reaches the socket itself, for a session that watches it
// for a hang-up without reading.
func (s *Stream) SyscallConn() (syscall.RawConn, error) {
	sc, ok := s.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("rpc: the connection has no file descriptor")
	}
	return sc.SyscallConn()
}

// OpenStream dials the socket and starts a stream method, decoding the
// response's result into result. ctx bounds the start only: the open
// session is the caller's until it closes it.
func (c *Client) OpenStream(ctx context.Context, method string, params, result any) (*Stream, error) {
	conn, err := c.dial(ctx, method)
	if err != nil {
		return nil, err
	}
	return OpenStreamConn(ctx, conn, method, params, result)
}

// OpenStreamConn starts a stream method on conn, a connection the caller
// opened by other means (a yamux stream to the guest agent). On an error
// conn is closed.
func OpenStreamConn(ctx context.Context, conn net.Conn, method string, params, result any) (*Stream, error) {
	req, err := encodeRequest(ctx, method, params)
	if err != nil {
		conn.Close()
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { interrupt(conn) })
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	_, werr := conn.Write(req)
	rest, err := readResponse(conn, result)
	if !stop() || ctxErr(ctx) != nil {
		conn.Close()
		return nil, fmt.Errorf("call %s: %w", method, ctxErr(ctx))
	}
	if err != nil {
		conn.Close()
		switch {
		case isServerAnswer(err):
			return nil, err
		case werr != nil:
			return nil, fmt.Errorf("call %s: write request: %w", method, werr)
		}
		return nil, fmt.Errorf("call %s: %w", method, err)
	}
	conn.SetDeadline(time.Time{})
	return newStream(conn, rest), nil
}

// interrupt ends a call at once: a deadline in the past wakes a blocked
// read, which closing alone does not for every conn (a yamux stream's
// Close only ends the writing side).
func interrupt(conn net.Conn) {
	conn.SetDeadline(time.Now())
	conn.Close()
}

// CommandClient calls a server that reads one request on its standard input
// and answers on its standard output, a new process per call: the root
// helper through `sudo -n banger bangerd-root --stdio`.
type CommandClient struct {
	Path string
	Args []string
	// Stderr receives the process's standard error (its log records).
	Stderr io.Writer
}

// Call runs the command and exchanges one request with it. Canceling ctx
// sends SIGTERM (which sudo relays) and, after a grace period, SIGKILL.
func (c *CommandClient) Call(ctx context.Context, method string, params, result any) error {
	req, err := encodeRequest(ctx, method, params)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, c.Path, c.Args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	cmd.Stdin = bytes.NewReader(req)
	cmd.Stderr = c.Stderr
	var out bytes.Buffer
	cmd.Stdout = &out
	runErr := cmd.Run()
	if ctx.Err() != nil {
		return fmt.Errorf("call %s: %w", method, ctx.Err())
	}
	err = decodeResponse(&out, result)
	if err == nil || isServerAnswer(err) {
		return err
	}
	if runErr != nil {
		return fmt.Errorf("%w: %s: %w", ErrUnreachable, c.Path, runErr)
	}
	return fmt.Errorf("call %s: %w", method, err)
}

// ctxErr is ctx.Err(), or context.DeadlineExceeded once ctx's deadline
// has passed: the connection's deadline is the same instant and can fire
// before the context's own timer has marked ctx done, and the caller must
// still see errors.Is(err, context.DeadlineExceeded).
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

func encodeRequest(ctx context.Context, method string, params any) ([]byte, error) {
	req := Request{Version: Version, Method: method, OpID: OpIDFrom(ctx)}
	if t := TraceFrom(ctx); t.ID != "" {
		req.Traceparent = t.Traceparent()
	}
	if params != nil {
		raw, err := json.Marshal(params)
		if err != nil {
			return nil, fmt.Errorf("encode params of %s: %w", method, err)
		}
		req.Params = raw
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode request %s: %w", method, err)
	}
	return append(b, '\n'), nil
}

// decodeResponse reads one response. A server error is returned as the
// *ErrorResponse itself so errors.As finds it without unwrapping.
func decodeResponse(r io.Reader, result any) error {
	_, err := readResponse(r, result)
	return err
}

// readResponse is decodeResponse that also returns the bytes it read past
// the response (a stream session's first frames).
func readResponse(r io.Reader, result any) (rest io.Reader, err error) {
	var resp Response
	// Bounded like a request: a response comes from a peer that may not
	// be trusted (a guest's agent).
	lr := &io.LimitedReader{R: r, N: MaxResponseSize + 1}
	dec := json.NewDecoder(lr)
	if err := dec.Decode(&resp); err != nil {
		if lr.N <= 0 {
			return nil, fmt.Errorf("read response: larger than %d bytes", MaxResponseSize)
		}
		if errors.Is(err, io.EOF) {
			return nil, errors.New("connection closed without a response")
		}
		return nil, fmt.Errorf("read response: %w", err)
	}
	if !resp.OK {
		if resp.Error == nil {
			return nil, &ErrorResponse{Code: CodeOperationFailed, Message: "rpc error"}
		}
		return nil, resp.Error
	}
	if result != nil && len(resp.Result) > 0 {
		if err := json.Unmarshal(resp.Result, result); err != nil {
			return nil, fmt.Errorf("decode result: %w", err)
		}
	}
	return dec.Buffered(), nil
}

func isServerAnswer(err error) bool {
	var e *ErrorResponse
	return errors.As(err, &e)
}

// unwrapDial drops net.OpError's repetition of the address.
func unwrapDial(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}
