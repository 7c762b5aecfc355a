package rpc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"banger/internal/errdefs"
	"banger/logging"
	"banger/rpc"
	"banger/rpc/rpctest"
)

// TestMain doubles as the stdio helper that CommandClient tests start: the
// test binary re-executed with RPC_TEST_STDIO=1 serves one request on its
// standard input and output, as `bangerd-root --stdio` does.
func TestMain(m *testing.M) {
	if os.Getenv("RPC_TEST_STDIO") == "1" {
		os.Exit(stdioChild())
	}
	os.Exit(m.Run())
}

func stdioChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	methods := baseMethods()
	methods["crash"] = func(context.Context, json.RawMessage) (any, error) {
		os.Exit(3)
		return nil, nil
	}
	s := &rpc.Server{
		Methods:   methods,
		Authorize: func(rpc.Peer) error { return nil },
		Logger:    logging.New(os.Stderr, "bangerd-root", zerolog.DebugLevel),
		AdoptOpID: true,
		CallLog:   rpc.CallLog{Completed: "helper rpc completed", Failed: "helper rpc failed", Level: zerolog.InfoLevel},
	}
	s.ServeStdio(ctx, os.Stdin, os.Stdout, rpc.Peer{UID: uint32(os.Getuid()), PID: int32(os.Getppid())})
	return 0
}

// codes is the closed list of error codes of PROTOCOL.md.
var codes = []string{
	"bad_request", "bad_version", "unknown_method", "invalid_params", "not_found",
	"already_exists", "conflict", "unauthorized", "not_running", "unavailable",
	"canceled", "timeout", "operation_failed",
}

type echoParams struct {
	Name string `json:"name"`
	N    int    `json:"n"`
}

type echoResult struct {
	Name string `json:"name"`
	N    int    `json:"n"`
	OpID string `json:"op_id"`
}

type pong struct {
	Pong bool `json:"pong"`
}

// panicMarshaler panics while its result is encoded.
type panicMarshaler struct{}

func (panicMarshaler) MarshalJSON() ([]byte, error) { panic("marshal kaboom") }

// baseMethods is the dispatch table every test server starts with.
func baseMethods() rpc.Methods {
	fail := func(err error) rpc.Handler {
		return func(context.Context, json.RawMessage) (any, error) { return nil, err }
	}
	return rpc.Methods{
		"ping": rpc.Handle(func(context.Context, rpc.NoParams) (pong, error) {
			return pong{Pong: true}, nil
		}),
		"echo": rpc.Handle(func(ctx context.Context, p echoParams) (echoResult, error) {
			return echoResult{Name: p.Name, N: p.N, OpID: rpc.OpIDFrom(ctx)}, nil
		}),
		"trace": rpc.Handle(func(ctx context.Context, _ rpc.NoParams) (string, error) {
			logging.From(ctx).Info().Msg("traced record")
			return rpc.TraceIDFrom(ctx), nil
		}),
		"op": rpc.Handle(func(ctx context.Context, _ rpc.NoParams) (string, error) {
			logging.From(ctx).Info().Str("step", "inside").Msg("handler record")
			return rpc.OpIDFrom(ctx), nil
		}),
		"whoami": rpc.Handle(func(ctx context.Context, _ rpc.NoParams) (rpc.Peer, error) {
			p, ok := rpc.PeerFrom(ctx)
			if !ok {
				return p, errors.New("no peer on the context")
			}
			return p, nil
		}),
		"nothing": func(context.Context, json.RawMessage) (any, error) { return nil, nil },
		"fail.not_found": func(ctx context.Context, _ json.RawMessage) (any, error) {
			// The message carries the handler's op id so tests can compare
			// it with the one stamped on the response.
			return nil, rpc.Errorf(rpc.CodeNotFound, "vm %q not found (handler op %s)", "box", rpc.OpIDFrom(ctx))
		},
		"fail.plain":     fail(errors.New("disk full")),
		"fail.wrapped":   fail(fmt.Errorf("create tap tap-3f2a: %w", rpc.Errorf(rpc.CodeConflict, "tap busy"))),
		"fail.kind":      fail(errdefs.Errorf(errdefs.ErrAlreadyExists, "a VM named %q already exists", "box")),
		"fail.wrapkind":  fail(fmt.Errorf("create box: %w", errdefs.Errorf(errdefs.ErrUnavailable, "no qemu"))),
		"fail.canceled":  fail(fmt.Errorf("wait for boot: %w", context.Canceled)),
		"fail.timeout":   fail(fmt.Errorf("wait for agent: %w", context.DeadlineExceeded)),
		"fail.multiline": fail(errors.New("mkfs.ext4 failed:\nline two\r\nline three")),
		"fail.nocode":    fail(&rpc.ErrorResponse{Message: "forgot the code"}),
		"fail.nilerr": func(context.Context, json.RawMessage) (any, error) {
			var e *rpc.ErrorResponse // a typed nil: a classic handler bug
			return nil, e
		},
		"panic": func(context.Context, json.RawMessage) (any, error) { panic("kaboom") },
		"badresult": func(context.Context, json.RawMessage) (any, error) {
			return panicMarshaler{}, nil
		},
		"unencodable": func(context.Context, json.RawMessage) (any, error) {
			return map[string]any{"c": make(chan int)}, nil
		},
		"block": func(ctx context.Context, _ json.RawMessage) (any, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		},
	}
}

// syncBuffer is a log buffer of the servers' goroutines, with the
// readers of its records.
type syncBuffer struct{ rpctest.LogBuffer }

// records returns the JSON log records written so far.
func (s *syncBuffer) records(t testing.TB) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range bytes.Split([]byte(s.String()), []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// waitRecord waits for a log record that match accepts: the call's record
// is written after the response, so a caller can read its answer first.
func (s *syncBuffer) waitRecord(t testing.TB, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, r := range s.records(t) {
			if match(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no matching log record in:\n%s", s.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// shortTempDir is a temporary directory whose path leaves room for a socket
// name within the 108 bytes of sun_path (t.TempDir's can be too long).
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bgr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func allowMe() rpc.PeerPolicy { return rpc.AllowUIDs(uint32(os.Getuid())) }

type testServer struct {
	*rpc.Server
	Sock string
	Logs *syncBuffer

	served   chan error
	once     sync.Once
	serveErr error
}

// startServer serves baseMethods on a fresh socket, admitting our own uid
// and logging at debug into Logs; configure adjusts the server first. The
// server is shut down when the test ends.
func startServer(t testing.TB, configure ...func(*rpc.Server)) *testServer {
	t.Helper()
	logs := &syncBuffer{}
	s := &rpc.Server{
		Methods:   baseMethods(),
		Authorize: allowMe(),
		Logger:    logging.New(logs, "rpctest", zerolog.DebugLevel),
	}
	for _, f := range configure {
		f(s)
	}
	sock := filepath.Join(shortTempDir(t), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: s, Sock: sock, Logs: logs, served: make(chan error, 1)}
	go func() { ts.served <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		if err := ts.serveResult(10 * time.Second); !errors.Is(err, rpc.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ts
}

// serveResult waits up to d for Serve to return and gives its error.
func (ts *testServer) serveResult(d time.Duration) error {
	ts.once.Do(func() {
		select {
		case ts.serveErr = <-ts.served:
		case <-time.After(d):
			ts.serveErr = errors.New("Serve did not return")
		}
	})
	return ts.serveErr
}

func (ts *testServer) client() *rpc.Client { return &rpc.Client{Socket: ts.Sock} }

// rawExchange writes req on a fresh connection by hand, half-closes when
// asked, and returns every byte the server sent before closing.
func rawExchange(t testing.TB, sock string, req []byte, closeWrite bool) []byte {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	// Write on the side: a server that refuses or rejects early closes
	// without reading everything, and the answer must still be read.
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		conn.Write(req)
		if closeWrite {
			conn.(*net.UnixConn).CloseWrite()
		}
	}()
	b, err := io.ReadAll(conn)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read response: %v (got %q)", err, b)
	}
	conn.Close()
	<-wrote
	return b
}

// wireError is the error object with nothing but the protocol's fields.
type wireError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	OpID    string `json:"op_id"`
}

// checkWire checks that b is exactly one protocol response on one line and
// returns it: an object with only ok, result and error; an error with a
// code of the closed list, a one-line message and a well-formed op id.
func checkWire(b []byte) (rpc.Response, error) {
	var resp rpc.Response
	if len(b) == 0 || b[len(b)-1] != '\n' || bytes.IndexByte(b, '\n') != len(b)-1 {
		return resp, fmt.Errorf("response is not exactly one line: %q", b)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var fields map[string]json.RawMessage
	if err := dec.Decode(&fields); err != nil || fields == nil {
		return resp, fmt.Errorf("response %q is not one JSON object: %v", b, err)
	}
	if rest := bytes.TrimSpace(b[dec.InputOffset():]); len(rest) > 0 {
		return resp, fmt.Errorf("bytes after the response: %q", rest)
	}
	for k := range fields {
		if k != "ok" && k != "result" && k != "error" {
			return resp, fmt.Errorf("response has unknown field %q: %s", k, b)
		}
	}
	if _, ok := fields["ok"]; !ok {
		return resp, fmt.Errorf("response has no ok: %s", b)
	}
	if err := json.Unmarshal(b, &resp); err != nil {
		return resp, fmt.Errorf("response %s: %v", b, err)
	}
	if resp.OK {
		if resp.Error != nil {
			return resp, fmt.Errorf("ok response with an error: %s", b)
		}
		return resp, nil
	}
	if resp.Error == nil {
		return resp, fmt.Errorf("failed response without an error object: %s", b)
	}
	var we wireError
	d := json.NewDecoder(bytes.NewReader(fields["error"]))
	d.DisallowUnknownFields()
	if err := d.Decode(&we); err != nil {
		return resp, fmt.Errorf("error object %s: %v", fields["error"], err)
	}
	if !slices.Contains(codes, we.Code) {
		return resp, fmt.Errorf("error code %q is not in PROTOCOL.md's list: %s", we.Code, b)
	}
	if !rpc.ValidOpID(we.OpID) {
		return resp, fmt.Errorf("error op_id %q is not a well-formed op id: %s", we.OpID, b)
	}
	if we.Message == "" || bytes.ContainsAny([]byte(we.Message), "\r\n") {
		return resp, fmt.Errorf("error message %q is empty or not one line", we.Message)
	}
	return resp, nil
}

// mustWire is checkWire for tests.
func mustWire(t testing.TB, b []byte) rpc.Response {
	t.Helper()
	resp, err := checkWire(b)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// wantError checks a failed response's code and returns its error.
func wantError(t testing.TB, resp rpc.Response, code string) *rpc.ErrorResponse {
	t.Helper()
	if resp.OK || resp.Error == nil {
		t.Fatalf("response ok, want %s: %+v", code, resp)
	}
	if resp.Error.Code != code {
		t.Fatalf("code = %q (%s), want %q", resp.Error.Code, resp.Error.Message, code)
	}
	return resp.Error
}

// asErrorResponse extracts the typed server error from a Call error.
func asErrorResponse(t testing.TB, err error, code string) *rpc.ErrorResponse {
	t.Helper()
	var e *rpc.ErrorResponse
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *rpc.ErrorResponse", err, err)
	}
	if e.Code != code {
		t.Fatalf("code = %q (%v), want %q", e.Code, err, code)
	}
	if !rpc.ValidOpID(e.OpID) {
		t.Fatalf("op id %q of %v is not well-formed", e.OpID, err)
	}
	return e
}

// within fails the test when ch does not deliver within d.
func within[T any](t testing.TB, d time.Duration, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("%s: nothing within %v", what, d)
		panic("unreachable")
	}
}
