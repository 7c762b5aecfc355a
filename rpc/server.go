package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"banger/logging"
)

// Handler serves one method. params is the raw "params" value (nil when
// absent). The returned value is marshaled as the result; a returned error
// becomes the error response (its code from CodeOf).
type Handler func(ctx context.Context, params json.RawMessage) (any, error)

// Methods is a server's dispatch table.
type Methods map[string]Handler

// StreamHandler starts a stream method: it checks params and prepares
// the session. An error is answered like a Handler's. Otherwise the ok
// response carries result, and serve then owns the connection: it reads
// and writes the session's bytes until it returns, and the server closes
// the connection. A nil serve ends the call after the response.
type StreamHandler func(ctx context.Context, params json.RawMessage) (result any, serve StreamFunc, err error)

// StreamFunc runs a stream session on the call's connection. Its error,
// if any, goes to the call's record.
type StreamFunc func(ctx context.Context, conn net.Conn) error

// Streams is a server's table of stream methods.
type Streams map[string]StreamHandler

// HandleStream adapts a typed function to a StreamHandler, decoding params
// as Handle does.
func HandleStream[P, R any](fn func(ctx context.Context, params P) (R, StreamFunc, error)) StreamHandler {
	return func(ctx context.Context, raw json.RawMessage) (any, StreamFunc, error) {
		p, err := decodeParams[P](raw)
		if err != nil {
			return nil, nil, err
		}
		return fn(ctx, p)
	}
}

// NoParams is the parameter type of methods that take none.
type NoParams struct{}

// Handle adapts a typed function to a Handler: params are decoded into P
// (absent or null params give P's zero value; unknown fields are ignored),
// and a decode error is answered with invalid_params.
func Handle[P, R any](fn func(ctx context.Context, params P) (R, error)) Handler {
	return func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := decodeParams[P](raw)
		if err != nil {
			return nil, err
		}
		return fn(ctx, p)
	}
}

// decodeParams decodes raw params into P: absent or null give P's zero
// value, unknown fields are ignored, anything else that does not decode
// is invalid_params.
func decodeParams[P any](raw json.RawMessage) (P, error) {
	var p P
	if len(raw) > 0 && !bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		if err := json.Unmarshal(raw, &p); err != nil {
			return p, Errorf(CodeInvalidParams, "params: %v", err)
		}
	}
	return p, nil
}

// Peer is the process on the other end of a connection.
type Peer struct {
	UID uint32
	GID uint32
	PID int32
	// Trusted is set, and UID and GID are NoID, when the server's
	// transport authenticated the peer itself (Server.TrustTransport)
	// instead of the kernel's SO_PEERCRED.
	Trusted bool
}

// NoID is the UID and GID of a peer whose credentials were not read: it is
// no real user's, so AllowUIDs never admits it.
const NoID = ^uint32(0)

// PeerPolicy decides whether a peer may call at all. It runs once per
// connection, before the request is read.
type PeerPolicy func(Peer) error

// AllowUIDs is the policy that admits exactly the given uids.
func AllowUIDs(uids ...uint32) PeerPolicy {
	return func(p Peer) error {
		for _, u := range uids {
			if p.UID == u {
				return nil
			}
		}
		return fmt.Errorf("uid %d may not use this socket", p.UID)
	}
}

// AllowTrusted is the policy of a TrustTransport server: it admits the
// peers its transport vouched for, and nobody else.
func AllowTrusted(p Peer) error {
	if !p.Trusted {
		return errors.New("this server admits only peers of its trusted transport")
	}
	return nil
}

type peerKey struct{}

// PeerFrom returns the peer of the call being served on ctx.
func PeerFrom(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// Server answers requests with its Methods. The zero value refuses every
// peer: set Authorize.
type Server struct {
	Methods Methods
	// Streams are the methods whose call goes on as a session on its
	// connection after the response (the client's OpenStream). They are
	// served only on connections, never over ServeStdio.
	Streams Streams
	// Authorize admits peers; nil admits none (fail closed).
	Authorize PeerPolicy
	// TrustTransport says the listener's connections were authenticated by
	// the transport itself, so they are not asked for SO_PEERCRED (which
	// only Unix sockets have): the guest agent's yamux streams on its
	// virtio-serial port, which only the host's engine can open. Each
	// connection's Peer is then {Trusted: true, UID: NoID, GID: NoID};
	// Authorize still decides (AllowTrusted).
	TrustTransport bool
	// Logger is the base of every record; each call adds op_id and method.
	Logger zerolog.Logger
	// AdoptOpID makes the server use a well-formed inbound op_id instead of
	// the one it minted (the root helper does; the daemon does not).
	AdoptOpID bool
	// ReadTimeout bounds the wait for the whole request (default 10 s).
	ReadTimeout time.Duration
	// CallLog names and levels the one record written per call.
	CallLog CallLog
	// Spans, when set, starts a span for each call that reaches its
	// handler (package telemetry exports them over OpenTelemetry). Nil
	// costs nothing.
	Spans Spans

	mu        sync.Mutex // guards listeners, shutdown
	listeners map[net.Listener]struct{}
	shutdown  bool
	inflight  sync.WaitGroup
	ctx       context.Context // base of every handler's context
	cancel    context.CancelFunc
	once      sync.Once
}

// Spans starts the span of each call a server serves.
type Spans interface {
	// StartCall starts the span of a call to method, a child of the
	// caller's span on ctx (TraceFrom), and returns ctx with the call's
	// span as the one calls made on are children of, and the function
	// that ends the span with the call's error code ("": it succeeded).
	StartCall(ctx context.Context, method string) (context.Context, func(code string))
}

// CallLog says how the per-call record is written.
type CallLog struct {
	Completed string        // message on success (default "rpc completed")
	Failed    string        // message on failure (default "rpc failed")
	Level     zerolog.Level // level on success; failures are at warn or above
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("rpc: server closed")

func (s *Server) init() {
	s.once.Do(func() {
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.listeners = map[net.Listener]struct{}{}
	})
}

// Serve accepts connections on ln and serves one request on each, until
// Shutdown. It closes ln.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.shutdown
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isResourceShortage(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.Logger.Warn().Err(err).Dur("retry_in", backoff).Msg("accept failed")
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		// Add under mu, and only before Shutdown: Shutdown's Wait must not
		// run concurrently with an Add from zero (sync.WaitGroup's rule),
		// and a connection accepted as Shutdown closes ln is refused.
		s.mu.Lock()
		if s.shutdown {
			s.mu.Unlock()
			conn.Close()
			return ErrServerClosed
		}
		s.inflight.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.inflight.Done()
			s.serveConn(conn)
		}()
	}
}

// Shutdown stops accepting, then waits for calls in flight until ctx ends;
// at that point it cancels their contexts and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.inflight.Wait(); close(done) }()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.cancel()
		return ctx.Err()
	}
}

func (s *Server) serveConn(conn net.Conn) {
	defer conn.Close()
	peer, perr := Peer{UID: NoID, GID: NoID, Trusted: true}, error(nil)
	if !s.TrustTransport {
		peer, perr = peerOf(conn)
	}
	timeout := s.ReadTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	conn.SetReadDeadline(time.Now().Add(timeout))
	s.exchange(s.ctx, conn, conn, peer, perr, conn)
}

// ServeStdio serves one request read from r and answers on w: the sudo
// mode of the root helper. peer is who asked (sudo's caller). The handler's
// context ends with ctx (keeping its deadline, so a timeout is reported as
// such) or at Shutdown; ending ctx does not end the server.
func (s *Server) ServeStdio(ctx context.Context, r io.Reader, w io.Writer, peer Peer) {
	s.init()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	s.exchange(ctx, r, w, peer, nil, nil)
}

// exchange reads, dispatches and answers one request, and writes the one
// record of the call. The handler's context derives from base; conn, when
// set, is watched for the peer hanging up. The record of a plain call is
// written before its answer, so that a caller's next call is always
// logged after it (a log read in order is the order of the calls). A
// stream method goes on with its session on conn after the answer; its
// record is written when the session ends.
func (s *Server) exchange(base context.Context, r io.Reader, w io.Writer, peer Peer, peerErr error, conn net.Conn) {
	start := time.Now()
	c := call{opID: NewOpID(), peer: peer}
	resp, st := s.dispatch(base, &c, r, peerErr, conn)
	if st == nil {
		s.logCall(&c, resp, time.Since(start))
		c.endSpan(resp)
		writeResponse(w, conn, resp)
		return
	}
	writeResponse(w, conn, resp)
	s.runStream(&c, st, conn)
	s.logCall(&c, resp, time.Since(start))
	c.endSpan(resp)
}

type call struct {
	opID      string
	trace     Trace // the request's, or one of its own
	method    string
	peer      Peer
	panic     any
	stack     []byte
	streamErr error             // how a stream session ended, if it failed
	end       func(code string) // ends the call's span (Server.Spans), if any
}

// endSpan ends the call's span, if it has one, with its error code: the
// answer's, or the session's when an answered stream broke.
func (c *call) endSpan(resp *Response) {
	switch {
	case c.end == nil:
	case !resp.OK:
		c.end(resp.Error.Code)
	case c.streamErr != nil:
		c.end(CodeOf(c.streamErr))
	default:
		c.end("")
	}
}

// pendingStream is a stream method's session, to run once its ok answer
// is written.
type pendingStream struct {
	ctx    context.Context
	cancel context.CancelFunc
	serve  StreamFunc
	rest   io.Reader // request bytes read past the request object
}

func (s *Server) dispatch(base context.Context, c *call, r io.Reader, peerErr error, conn net.Conn) (*Response, *pendingStream) {
	fail := func(err *ErrorResponse) (*Response, *pendingStream) {
		err.OpID = c.opID
		return &Response{Error: err}, nil
	}
	// A peer whose credentials cannot be read is refused unheard (fail
	// closed). Otherwise the request is read, bounded in size and time,
	// before the peer check, so that a refusal carries the caller's op id
	// and method: a daemon the helper refuses then finds the refusal under
	// its own op id in `banger trace`. Nothing in the request is acted on
	// before the check.
	if peerErr != nil {
		return fail(Errorf(CodeUnauthorized, "cannot read peer credentials: %v", peerErr))
	}
	req, rest, errResp := readRequest(r)
	if req != nil {
		if s.AdoptOpID && ValidOpID(req.OpID) {
			c.opID = req.OpID
		}
		c.method = logSafe(req.Method)
		c.trace, _ = ParseTrace(req.Traceparent)
	}
	if c.trace.ID == "" {
		// No trace, or a malformed one (never refused for it): the call
		// is a trace of its own.
		c.trace = Trace{ID: NewTraceID()}
	}
	if err := s.authorize(c.peer); err != nil {
		return fail(err)
	}
	if errResp != nil {
		return fail(errResp)
	}
	if req.Version != Version {
		return fail(Errorf(CodeBadVersion, "protocol version %d is not supported; this server speaks version %d", req.Version, Version))
	}
	h, ok := s.Methods[req.Method]
	sh, isStream := s.Streams[req.Method]
	if isStream && conn == nil {
		return fail(Errorf(CodeUnknownMethod, "%q is a stream method, which needs a connection of its own", c.method))
	}
	if !ok && !isStream {
		return fail(Errorf(CodeUnknownMethod, "unknown method %q", c.method))
	}

	ctx, cancel := context.WithCancel(base)
	ctx = WithOpID(ctx, c.opID)
	ctx = WithSpan(ctx, c.trace)
	ctx = context.WithValue(ctx, peerKey{}, c.peer)
	ctx = logging.WithOp(ctx, s.Logger.With().Str("trace_id", c.trace.ID).Logger(), c.opID, c.method)
	if s.Spans != nil {
		ctx, c.end = s.Spans.StartCall(ctx, c.method)
	}
	if !isStream {
		defer cancel()
		if conn != nil {
			defer watchConn(conn, cancel)()
		}
		return s.invoke(ctx, c, h, req.Params), nil
	}
	// No hang-up watch here: it would eat bytes the client sends after
	// the request. The session notices a peer that left.
	var serve StreamFunc
	resp := s.invoke(ctx, c, func(ctx context.Context, params json.RawMessage) (any, error) {
		result, fn, err := sh(ctx, params)
		serve = fn
		return result, err
	}, req.Params)
	// A session prepared as the server shuts down still runs: on a
	// closed connection it ends at once, and releases what it prepared.
	if !resp.OK || serve == nil {
		cancel()
		return resp, nil
	}
	return resp, &pendingStream{ctx: ctx, cancel: cancel, serve: serve, rest: rest}
}

// runStream hands conn to a stream method's session until it returns.
// Ending the call's context (Shutdown) closes conn, so a session blocked
// on it returns.
func (s *Server) runStream(c *call, st *pendingStream, conn net.Conn) {
	defer st.cancel()
	conn.SetDeadline(time.Time{})
	stop := context.AfterFunc(st.ctx, func() { conn.Close() })
	defer stop()
	defer func() {
		if p := recover(); p != nil {
			c.panic, c.stack = p, debug.Stack()
		}
	}()
	c.streamErr = st.serve(st.ctx, newStream(conn, st.rest))
}

// hangupWatchDelay is how long a call runs before its connection is
// watched for the peer hanging up. Most calls end sooner, and watching
// costs a goroutine, a read and a wake-up per call; a hang-up is noticed
// at most this much later.
const hangupWatchDelay = 10 * time.Millisecond

// watchConn arranges for cancel to be called if the peer of conn hangs up
// while the call runs, starting after hangupWatchDelay, and returns the
// function that ends the watch (and waits for the watcher to exit).
func watchConn(conn net.Conn, cancel func()) (stop func()) {
	done := make(chan struct{})   // closed when the call is over
	exited := make(chan struct{}) // closed when the watcher returns
	t := time.AfterFunc(hangupWatchDelay, func() {
		defer close(exited)
		// Clear the request's read deadline, then look at done: stop
		// closes done before it sets a past deadline, so either we see
		// done here or our Read sees that deadline.
		conn.SetReadDeadline(time.Time{})
		select {
		case <-done:
			return
		default:
		}
		watchHangup(conn, cancel, done)
	})
	return func() {
		if t.Stop() {
			return // the watcher never started
		}
		close(done)
		conn.SetReadDeadline(time.Now())
		<-exited
	}
}

// invoke runs the handler and encodes its outcome. A panic anywhere in
// there (the handler, its result's MarshalJSON, its error's Error method, a
// nil *ErrorResponse) becomes operation_failed and the server lives on.
func (s *Server) invoke(ctx context.Context, c *call, h Handler, params json.RawMessage) (resp *Response) {
	defer func() {
		if p := recover(); p != nil {
			c.panic, c.stack = p, debug.Stack()
			err := Errorf(CodeOperationFailed, "internal error in %s (logged)", c.method)
			err.OpID = c.opID
			resp = &Response{Error: err}
		}
	}()
	result, err := h(ctx, params)
	if err != nil {
		return &Response{Error: toErrorResponse(err, c.opID)}
	}
	resp = &Response{OK: true}
	if result != nil {
		raw, err := json.Marshal(result)
		if err != nil {
			return &Response{Error: toErrorResponse(fmt.Errorf("encode result: %w", err), c.opID)}
		}
		resp.Result = raw
	}
	return resp
}

func (s *Server) authorize(p Peer) *ErrorResponse {
	if s.Authorize == nil {
		return Errorf(CodeUnauthorized, "no peer is allowed on this socket")
	}
	if err := s.Authorize(p); err != nil {
		return Errorf(CodeUnauthorized, "%v", err)
	}
	return nil
}

// maxLoggedMethod bounds a method name as logged: a peer may send any
// string, and a record should not carry a megabyte of it.
const maxLoggedMethod = 128

func logSafe(method string) string {
	if len(method) <= maxLoggedMethod {
		return method
	}
	return method[:maxLoggedMethod] + "..."
}

// readRequest decodes one request of at most MaxRequestSize bytes, and
// returns the bytes it read past it too (a stream session's first frames).
func readRequest(r io.Reader) (*Request, io.Reader, *ErrorResponse) {
	lr := &io.LimitedReader{R: r, N: MaxRequestSize + 1}
	var req Request
	dec := json.NewDecoder(lr)
	err := dec.Decode(&req)
	switch {
	case err == nil:
	case lr.N <= 0:
		return nil, nil, Errorf(CodeBadRequest, "request larger than %d bytes", MaxRequestSize)
	case errors.Is(err, io.EOF):
		return nil, nil, Errorf(CodeBadRequest, "empty request")
	case isTimeout(err):
		return nil, nil, Errorf(CodeBadRequest, "request not received in time")
	default:
		return nil, nil, Errorf(CodeBadRequest, "request is not one JSON object: %v", err)
	}
	if req.Method == "" {
		return nil, nil, Errorf(CodeBadRequest, "request has no method")
	}
	return &req, dec.Buffered(), nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func writeResponse(w io.Writer, conn net.Conn, resp *Response) {
	b, err := json.Marshal(resp)
	if err != nil {
		b, _ = json.Marshal(&Response{Error: &ErrorResponse{Code: CodeOperationFailed, Message: "encode response"}})
	}
	if conn != nil {
		conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	}
	w.Write(append(b, '\n'))
}

func (s *Server) logCall(c *call, resp *Response, d time.Duration) {
	l := s.Logger
	if c.panic != nil {
		l.Error().Str("op_id", c.opID).Str("trace_id", c.trace.ID).Str("method", c.method).
			Str("panic", fmt.Sprint(c.panic)).Bytes("stack", c.stack).Msg("handler panicked")
	}
	msgOK, msgFail := s.CallLog.Completed, s.CallLog.Failed
	if msgOK == "" {
		msgOK = "rpc completed"
	}
	if msgFail == "" {
		msgFail = "rpc failed"
	}
	var e *zerolog.Event
	switch {
	case resp.OK && c.streamErr != nil:
		// The call was answered, but its session broke.
		e = l.WithLevel(max(s.CallLog.Level, zerolog.WarnLevel))
	case resp.OK:
		e = l.WithLevel(s.CallLog.Level)
	default:
		e = l.WithLevel(max(s.CallLog.Level, zerolog.WarnLevel))
	}
	e = e.Str("op_id", c.opID).Str("trace_id", c.trace.ID).Str("method", c.method).Float64("duration_ms", logging.Millis(d)).
		Uint32("uid", c.peer.UID).Int32("pid", c.peer.PID)
	if c.streamErr != nil {
		e = e.AnErr("session_error", c.streamErr)
	}
	if resp.OK {
		e.Msg(msgOK)
		return
	}
	e.Str("code", resp.Error.Code).Str("error", resp.Error.Message).Msg(msgFail)
}
