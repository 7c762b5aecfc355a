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
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"banger/logging"
	"banger/rpc"
)

func TestPing(t *testing.T) {
	ts := startServer(t)
	var got pong
	if err := ts.client().Call(context.Background(), "ping", nil, &got); err != nil {
		t.Fatal(err)
	}
	if !got.Pong {
		t.Errorf("result = %+v", got)
	}
}

func TestCallResultAndParams(t *testing.T) {
	ts := startServer(t)
	var got echoResult
	if err := ts.client().Call(context.Background(), "echo", echoParams{Name: "box", N: 3}, &got); err != nil {
		t.Fatal(err)
	}
	if got.Name != "box" || got.N != 3 || !rpc.ValidOpID(got.OpID) {
		t.Errorf("result = %+v", got)
	}
	// A nil result pointer discards the result; a method with no result
	// leaves the caller's value alone.
	if err := ts.client().Call(context.Background(), "echo", echoParams{Name: "x"}, nil); err != nil {
		t.Fatal(err)
	}
	keep := echoResult{Name: "untouched"}
	if err := ts.client().Call(context.Background(), "nothing", nil, &keep); err != nil || keep.Name != "untouched" {
		t.Errorf("Call(nothing) = %v, result %+v", err, keep)
	}
	// The wire form of a result-less answer has no result field.
	b := rawExchange(t, ts.Sock, []byte(`{"version":1,"method":"nothing"}`), true)
	if resp := mustWire(t, b); !resp.OK || resp.Result != nil {
		t.Errorf("nothing answered %s", b)
	}
}

func TestPeerOnContext(t *testing.T) {
	ts := startServer(t)
	var p rpc.Peer
	if err := ts.client().Call(context.Background(), "whoami", nil, &p); err != nil {
		t.Fatal(err)
	}
	if p.UID != uint32(os.Getuid()) || p.GID != uint32(os.Getgid()) || p.PID != int32(os.Getpid()) {
		t.Errorf("peer = %+v, want uid %d gid %d pid %d", p, os.Getuid(), os.Getgid(), os.Getpid())
	}
}

// TestDispatchStampsOpID covers every error a call can end in: each carries
// the op id of the call, in the response and in the call's log record.
func TestDispatchStampsOpID(t *testing.T) {
	ts := startServer(t)
	cases := []struct {
		name, req, code, msg string
	}{
		{"unknown method", `{"version":1,"method":"vm.nope"}`, "unknown_method", `unknown method "vm.nope"`},
		{"bad version", `{"version":2,"method":"ping"}`, "bad_version", "version 2 is not supported; this server speaks version 1"},
		{"no version", `{"method":"ping"}`, "bad_version", "version 0"},
		{"typed error", `{"version":1,"method":"fail.not_found"}`, "not_found", `vm "box" not found`},
		{"plain error", `{"version":1,"method":"fail.plain"}`, "operation_failed", "disk full"},
		{"wrapped typed error", `{"version":1,"method":"fail.wrapped"}`, "conflict", "create tap tap-3f2a: conflict: tap busy"},
		{"a kind of failure", `{"version":1,"method":"fail.kind"}`, "already_exists", `a VM named "box" already exists`},
		{"a wrapped kind", `{"version":1,"method":"fail.wrapkind"}`, "unavailable", "create box: unavailable: no qemu"},
		{"canceled", `{"version":1,"method":"fail.canceled"}`, "canceled", "wait for boot: context canceled"},
		{"deadline", `{"version":1,"method":"fail.timeout"}`, "timeout", "wait for agent: context deadline exceeded"},
		{"multi-line message", `{"version":1,"method":"fail.multiline"}`, "operation_failed", "mkfs.ext4 failed:; line two ; line three"},
		{"error without a code", `{"version":1,"method":"fail.nocode"}`, "operation_failed", "forgot the code"},
		{"nil *ErrorResponse", `{"version":1,"method":"fail.nilerr"}`, "operation_failed", "internal error in fail.nilerr"},
		{"result that panics", `{"version":1,"method":"badresult"}`, "operation_failed", "internal error in badresult"},
		{"result that cannot encode", `{"version":1,"method":"unencodable"}`, "operation_failed", "encode result: json: unsupported type"},
	}
	seen := map[string]bool{}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := wantError(t, mustWire(t, rawExchange(t, ts.Sock, []byte(tc.req), true)), tc.code)
			if !strings.Contains(e.Message, tc.msg) {
				t.Errorf("message %q does not contain %q", e.Message, tc.msg)
			}
			if seen[e.OpID] {
				t.Errorf("op id %s reused", e.OpID)
			}
			seen[e.OpID] = true
			if tc.code == "not_found" && !strings.Contains(e.Message, "handler op "+e.OpID) {
				t.Errorf("response op id %s is not the handler's: %q", e.OpID, e.Message)
			}
			// The one record of the call carries the same op id and code.
			r := ts.Logs.waitRecord(t, func(r map[string]any) bool {
				return r["op_id"] == e.OpID && r["msg"] == "rpc failed"
			})
			if r["code"] != tc.code || r["level"] != "warn" || r["error"] != e.Message {
				t.Errorf("call record = %v", r)
			}
		})
	}
	// The server lives on after handlers that panicked.
	if err := ts.client().Call(context.Background(), "ping", nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestCallLogRecords(t *testing.T) {
	ts := startServer(t, func(s *rpc.Server) {
		s.CallLog = rpc.CallLog{Completed: "helper rpc completed", Failed: "helper rpc failed", Level: zerolog.InfoLevel}
	})
	var opID string
	if err := ts.client().Call(context.Background(), "op", nil, &opID); err != nil {
		t.Fatal(err)
	}
	inside := ts.Logs.waitRecord(t, func(r map[string]any) bool {
		return r["op_id"] == opID && r["msg"] == "handler record"
	})
	done := ts.Logs.waitRecord(t, func(r map[string]any) bool {
		return r["op_id"] == opID && r["msg"] == "helper rpc completed"
	})
	// Records written by the handler through logging.From carry the op id
	// and the method without the handler adding them.
	if inside["method"] != "op" || inside["step"] != "inside" || inside["applet"] != "rpctest" {
		t.Errorf("handler record = %v", inside)
	}
	if done["level"] != "info" || done["method"] != "op" || done["uid"] != float64(os.Getuid()) || done["pid"] != float64(os.Getpid()) {
		t.Errorf("call record = %v", done)
	}
	if d, ok := done["duration_ms"].(float64); !ok || d < 0 {
		t.Errorf("duration_ms = %v", done["duration_ms"])
	}
	// Failures are at warn at least, with the custom message.
	ts.client().Call(context.Background(), "fail.plain", nil, nil)
	ts.Logs.waitRecord(t, func(r map[string]any) bool {
		return r["msg"] == "helper rpc failed" && r["method"] == "fail.plain" && r["level"] == "warn" &&
			r["code"] == "operation_failed" && r["error"] == "disk full"
	})
}

func TestZeroLoggerServes(t *testing.T) {
	ts := startServer(t, func(s *rpc.Server) { s.Logger = zerolog.Logger{} })
	if err := ts.client().Call(context.Background(), "ping", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := ts.client().Call(context.Background(), "panic", nil, nil); rpc.CodeOf(err) != rpc.CodeOperationFailed {
		t.Fatalf("panic call = %v", err)
	}
}

// Raw-socket tests: bytes written by hand, as a foreign or broken peer would.

func TestRawBadRequests(t *testing.T) {
	ts := startServer(t)
	cases := []struct {
		name, req  string
		closeWrite bool
		msg        string
	}{
		{"malformed JSON", `{"version":1,"method":}`, false, "not one JSON object"},
		{"not JSON at all", "hello\n", false, "not one JSON object"},
		{"truncated object", `{"version":1,"method":"ping"`, true, "not one JSON object"},
		{"empty", "", true, "empty request"},
		{"only whitespace", " \n\t\n", true, "empty request"},
		{"array", `[1]`, true, "not one JSON object"},
		{"string", `"x"`, true, "not one JSON object"},
		{"number", `1`, true, "not one JSON object"},
		{"null", `null`, true, "no method"},
		{"empty object", `{}`, true, "no method"},
		{"missing method", `{"version":1,"params":{}}`, true, "no method"},
		{"empty method", `{"version":1,"method":""}`, true, "no method"},
		{"method of the wrong type", `{"version":1,"method":7}`, true, "not one JSON object"},
		{"version of the wrong type", `{"version":"1","method":"ping"}`, true, "not one JSON object"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := wantError(t, mustWire(t, rawExchange(t, ts.Sock, []byte(tc.req), tc.closeWrite)), "bad_request")
			if !strings.Contains(e.Message, tc.msg) {
				t.Errorf("message %q does not contain %q", e.Message, tc.msg)
			}
		})
	}
}

func TestRawGoodRequests(t *testing.T) {
	ts := startServer(t)
	cases := []struct {
		name, req  string
		closeWrite bool
		want       echoResult
	}{
		{"no trailing newline, no half-close", `{"version":1,"method":"echo","params":{"name":"a"}}`, false, echoResult{Name: "a"}},
		{"absent op_id (older peer)", `{"version":1,"method":"echo","params":{"name":"b","n":2}}` + "\n", true, echoResult{Name: "b", N: 2}},
		{"unknown fields in request and params", `{"version":1,"method":"echo","future":{"x":[1,2]},"params":{"name":"c","color":"blue","n":1},"op_id":"op-01JT2M4Q8W3R6ZK5N7YB2C9D0E","trace":true}`, true, echoResult{Name: "c", N: 1}},
		{"null params", `{"version":1,"method":"echo","params":null}`, true, echoResult{}},
		{"absent params", `{"version":1,"method":"echo"}`, true, echoResult{}},
		{"spaced null params", `{"version":1,"method":"echo","params": null }`, true, echoResult{}},
		{"bytes after the request are ignored", `{"version":1,"method":"echo","params":{"name":"d"}} trailing junk`, true, echoResult{Name: "d"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := mustWire(t, rawExchange(t, ts.Sock, []byte(tc.req), tc.closeWrite))
			if !resp.OK {
				t.Fatalf("response %+v", resp.Error)
			}
			var got echoResult
			if err := json.Unmarshal(resp.Result, &got); err != nil {
				t.Fatal(err)
			}
			if !rpc.ValidOpID(got.OpID) {
				t.Errorf("handler op id %q", got.OpID)
			}
			got.OpID = ""
			if got != tc.want {
				t.Errorf("result = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestRawInvalidParams(t *testing.T) {
	ts := startServer(t)
	for _, params := range []string{`"notanobject"`, `[1,2]`, `{"n":"three"}`, `{"name":5}`, `7`} {
		t.Run(params, func(t *testing.T) {
			req := `{"version":1,"method":"echo","params":` + params + `}`
			e := wantError(t, mustWire(t, rawExchange(t, ts.Sock, []byte(req), true)), "invalid_params")
			if !strings.HasPrefix(e.Message, "params: ") {
				t.Errorf("message %q", e.Message)
			}
		})
	}
	// The typed error reaches a Go caller too.
	err := ts.client().Call(context.Background(), "echo", []int{1}, nil)
	asErrorResponse(t, err, rpc.CodeInvalidParams)
}

// TestRawTooLarge sends 2 MiB: the server answers bad_request after reading
// at most MaxRequestSize+1 bytes, and goes on serving.
func TestRawTooLarge(t *testing.T) {
	ts := startServer(t)
	big := `{"version":1,"method":"echo","params":{"name":"` + strings.Repeat("x", 2<<20) + `"}}`
	e := wantError(t, mustWire(t, rawExchange(t, ts.Sock, []byte(big), true)), "bad_request")
	if !strings.Contains(e.Message, "larger than 1048576 bytes") {
		t.Errorf("message %q", e.Message)
	}
	// Garbage that never forms a value is cut at the limit as well.
	junk := bytes.Repeat([]byte(" "), 2<<20)
	e = wantError(t, mustWire(t, rawExchange(t, ts.Sock, junk, true)), "bad_request")
	if !strings.Contains(e.Message, "larger than") {
		t.Errorf("message %q", e.Message)
	}
	// A request just under the limit is served.
	name := strings.Repeat("y", rpc.MaxRequestSize-200)
	var got echoResult
	if err := ts.client().Call(context.Background(), "echo", echoParams{Name: name}, &got); err != nil || got.Name != name {
		t.Fatalf("request under the limit: %v", err)
	}
	if err := ts.client().Call(context.Background(), "ping", nil, nil); err != nil {
		t.Fatal(err)
	}
}

// TestRawTooLargeMemoryBounded streams 64 MiB at the server: it must stop
// reading at the limit, not buffer the stream.
func TestRawTooLargeMemoryBounded(t *testing.T) {
	ts := startServer(t)
	conn, err := net.Dial("unix", ts.Sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var sent atomic.Int64
	go func() {
		conn.Write([]byte(`{"version":1,"method":"echo","params":{"name":"`))
		for sent.Load() < 64<<20 {
			n, err := conn.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	b, _ := io.ReadAll(conn)
	runtime.ReadMemStats(&after)
	e := wantError(t, mustWire(t, b), "bad_request")
	if !strings.Contains(e.Message, "larger than") {
		t.Errorf("message %q", e.Message)
	}
	if n := sent.Load(); n >= 64<<20 {
		t.Errorf("server took all %d bytes", n)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Errorf("serving one oversized request allocated %d MiB", alloc>>20)
	}
}

// TestRawStalledRequest: a peer that sends half a request and then nothing
// is answered and dropped after ReadTimeout; others are served meanwhile.
func TestRawStalledRequest(t *testing.T) {
	ts := startServer(t, func(s *rpc.Server) { s.ReadTimeout = 500 * time.Millisecond })
	conn, err := net.Dial("unix", ts.Sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := conn.Write([]byte(`{"version":1,`)); err != nil {
		t.Fatal(err)
	}
	// Other peers are served while this one stalls.
	if err := ts.client().Call(context.Background(), "ping", nil, nil); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	b, err := io.ReadAll(conn) // ends when the server closes
	if err != nil {
		t.Fatalf("read: %v (got %q)", err, b)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("stalled connection held for %v", d)
	}
	e := wantError(t, mustWire(t, b), "bad_request")
	if !strings.Contains(e.Message, "not received in time") {
		t.Errorf("message %q", e.Message)
	}
	if err := ts.client().Call(context.Background(), "ping", nil, nil); err != nil {
		t.Fatal(err)
	}
}

// TestReadTimeoutIsNotCallTimeout: the read deadline covers the request,
// not the handler.
func TestReadTimeoutIsNotCallTimeout(t *testing.T) {
	ts := startServer(t, func(s *rpc.Server) {
		s.ReadTimeout = 500 * time.Millisecond
		s.Methods["slow"] = func(ctx context.Context, _ json.RawMessage) (any, error) {
			select {
			case <-time.After(1200 * time.Millisecond):
				return "done", nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	})
	var got string
	if err := ts.client().Call(context.Background(), "slow", nil, &got); err != nil || got != "done" {
		t.Fatalf("slow call = %q, %v", got, err)
	}
}

// hold registers a method that reports when it starts and how it ended:
// canceled (ctx.Err) or, after d, finished (nil).
func hold(d time.Duration, started chan<- struct{}, ended chan<- error) func(*rpc.Server) {
	return func(s *rpc.Server) {
		s.Methods["hold"] = func(ctx context.Context, _ json.RawMessage) (any, error) {
			started <- struct{}{}
			select {
			case <-ctx.Done():
				ended <- ctx.Err()
				return nil, ctx.Err()
			case <-time.After(d):
				ended <- nil
				return "held", nil
			}
		}
	}
}

func TestClientHangupCancelsHandler(t *testing.T) {
	t.Run("client cancels its context", func(t *testing.T) {
		started, ended := make(chan struct{}, 1), make(chan error, 1)
		ts := startServer(t, hold(time.Minute, started, ended))
		ctx, cancel := context.WithCancel(context.Background())
		callErr := make(chan error, 1)
		go func() { callErr <- ts.client().Call(ctx, "hold", nil, nil) }()
		within(t, 10*time.Second, started, "handler start")
		t0 := time.Now()
		cancel()
		if err := within(t, 5*time.Second, callErr, "Call return"); !errors.Is(err, context.Canceled) {
			t.Errorf("Call = %v, want context.Canceled", err)
		}
		if err := within(t, 2*time.Second, ended, "handler cancellation"); !errors.Is(err, context.Canceled) {
			t.Errorf("handler ended with %v, want context.Canceled", err)
		}
		t.Logf("handler saw the hang-up %v after cancel", time.Since(t0))
	})
	t.Run("raw peer closes", func(t *testing.T) {
		started, ended := make(chan struct{}, 1), make(chan error, 1)
		ts := startServer(t, hold(time.Minute, started, ended))
		conn, err := net.Dial("unix", ts.Sock)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte(`{"version":1,"method":"hold"}` + "\n"))
		within(t, 10*time.Second, started, "handler start")
		conn.Close()
		if err := within(t, 2*time.Second, ended, "handler cancellation"); !errors.Is(err, context.Canceled) {
			t.Errorf("handler ended with %v", err)
		}
		// The call's record says it was canceled.
		ts.Logs.waitRecord(t, func(r map[string]any) bool {
			return r["method"] == "hold" && r["code"] == "canceled" && rpc.ValidOpID(fmt.Sprint(r["op_id"]))
		})
	})
	t.Run("raw peer sends more and then closes", func(t *testing.T) {
		started, ended := make(chan struct{}, 1), make(chan error, 1)
		ts := startServer(t, hold(time.Minute, started, ended))
		conn, err := net.Dial("unix", ts.Sock)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte(`{"version":1,"method":"hold"}` + "\n"))
		within(t, 10*time.Second, started, "handler start")
		conn.Write(bytes.Repeat([]byte("z"), 10000)) // ignored
		conn.Close()
		if err := within(t, 2*time.Second, ended, "handler cancellation"); !errors.Is(err, context.Canceled) {
			t.Errorf("handler ended with %v", err)
		}
	})
}

// TestHalfCloseIsNotHangup: a peer that shuts its write side after the
// request still waits for the answer; its handler must run to the end.
func TestHalfCloseIsNotHangup(t *testing.T) {
	started, ended := make(chan struct{}, 1), make(chan error, 1)
	ts := startServer(t, hold(500*time.Millisecond, started, ended))
	b := rawExchange(t, ts.Sock, []byte(`{"version":1,"method":"hold"}`), true)
	if err := within(t, 10*time.Second, ended, "handler end"); err != nil {
		t.Errorf("handler was canceled: %v", err)
	}
	resp := mustWire(t, b)
	if !resp.OK || string(resp.Result) != `"held"` {
		t.Errorf("response = %s", b)
	}
}

func TestHandlerPanic(t *testing.T) {
	ts := startServer(t)
	err := ts.client().Call(context.Background(), "panic", nil, nil)
	e := asErrorResponse(t, err, rpc.CodeOperationFailed)
	if e.Message != "internal error in panic (logged)" {
		t.Errorf("message %q", e.Message)
	}
	rec := ts.Logs.waitRecord(t, func(r map[string]any) bool { return r["msg"] == "handler panicked" })
	stack, _ := rec["stack"].(string)
	if rec["op_id"] != e.OpID || rec["method"] != "panic" || rec["panic"] != "kaboom" || rec["level"] != "error" ||
		!strings.Contains(stack, "goroutine") || !strings.Contains(stack, "rpc_test.baseMethods") {
		t.Errorf("panic record = %v", rec)
	}
	// The next call is served.
	var got pong
	if err := ts.client().Call(context.Background(), "ping", nil, &got); err != nil || !got.Pong {
		t.Fatalf("ping after panic = %v", err)
	}
}

func TestRefusedPeer(t *testing.T) {
	other := uint32(os.Getuid()) + 4242
	t.Run("uid not allowed", func(t *testing.T) {
		ts := startServer(t, func(s *rpc.Server) { s.Authorize = rpc.AllowUIDs(other) })
		err := ts.client().Call(context.Background(), "ping", nil, nil)
		e := asErrorResponse(t, err, rpc.CodeUnauthorized)
		want := fmt.Sprintf("uid %d may not use this socket", os.Getuid())
		if e.Message != want {
			t.Errorf("message %q, want %q", e.Message, want)
		}
		if err.Error() != "unauthorized: "+want+" ("+e.OpID+")" {
			t.Errorf("Error() = %q", err.Error())
		}
	})
	t.Run("nil Authorize refuses everyone", func(t *testing.T) {
		ts := startServer(t, func(s *rpc.Server) { s.Authorize = nil })
		err := ts.client().Call(context.Background(), "ping", nil, nil)
		asErrorResponse(t, err, rpc.CodeUnauthorized)
	})
	t.Run("answer before the request is read", func(t *testing.T) {
		// The server refuses without reading; a request bigger than the
		// socket buffers makes the client's write fail, and the client
		// must still read the answer.
		ts := startServer(t, func(s *rpc.Server) { s.Authorize = rpc.AllowUIDs(other) })
		big := echoParams{Name: strings.Repeat("q", 900<<10)}
		for range 5 {
			err := ts.client().Call(context.Background(), "echo", big, nil)
			asErrorResponse(t, err, rpc.CodeUnauthorized)
		}
	})
	t.Run("policy error", func(t *testing.T) {
		ts := startServer(t, func(s *rpc.Server) {
			s.Authorize = func(p rpc.Peer) error {
				if p.PID != int32(os.Getpid()) {
					t.Errorf("policy saw peer %+v", p)
				}
				return errors.New("socket is closed for maintenance")
			}
		})
		b := rawExchange(t, ts.Sock, []byte(`{"version":1,"method":"ping"}`), true)
		e := wantError(t, mustWire(t, b), "unauthorized")
		if e.Message != "socket is closed for maintenance" {
			t.Errorf("message %q", e.Message)
		}
	})
}

func TestAllowUIDs(t *testing.T) {
	p := rpc.AllowUIDs(0, 1000)
	for uid, ok := range map[uint32]bool{0: true, 1000: true, 1001: false, 65534: false} {
		if err := p(rpc.Peer{UID: uid}); (err == nil) != ok {
			t.Errorf("AllowUIDs(0, 1000)(%d) = %v", uid, err)
		}
	}
	if err := rpc.AllowUIDs()(rpc.Peer{}); err == nil {
		t.Error("AllowUIDs() admitted uid 0")
	}
}

func TestShutdownWaitsForInflight(t *testing.T) {
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	ts := startServer(t, func(s *rpc.Server) {
		s.Methods["gate"] = func(ctx context.Context, _ json.RawMessage) (any, error) {
			started <- struct{}{}
			select {
			case <-release:
				return "released", nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	})
	callErr := make(chan error, 1)
	var got string
	go func() { callErr <- ts.client().Call(context.Background(), "gate", nil, &got) }()
	within(t, 10*time.Second, started, "handler start")

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		shut <- ts.Shutdown(ctx)
	}()
	// Serve returns at once; new connections are refused.
	if err := ts.serveResult(10 * time.Second); !errors.Is(err, rpc.ErrServerClosed) {
		t.Fatalf("Serve = %v", err)
	}
	if err := ts.client().Call(context.Background(), "ping", nil, nil); !errors.Is(err, rpc.ErrUnreachable) {
		t.Errorf("call during shutdown = %v, want ErrUnreachable", err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a call in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := within(t, 10*time.Second, callErr, "in-flight call"); err != nil || got != "released" {
		t.Errorf("in-flight call = %q, %v", got, err)
	}
	if err := within(t, 10*time.Second, shut, "Shutdown"); err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	// Serve on a closed server refuses at once.
	ln, err := net.Listen("unix", ts.Sock+"2")
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.Serve(ln); !errors.Is(err, rpc.ErrServerClosed) {
		t.Errorf("Serve after Shutdown = %v", err)
	}
}

func TestShutdownExpiredCancelsHandlers(t *testing.T) {
	started, ended := make(chan struct{}, 1), make(chan error, 1)
	ts := startServer(t, hold(time.Minute, started, ended))
	callErr := make(chan error, 1)
	go func() { callErr <- ts.client().Call(context.Background(), "hold", nil, nil) }()
	within(t, 10*time.Second, started, "handler start")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := ts.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if err := within(t, 5*time.Second, ended, "handler cancellation"); !errors.Is(err, context.Canceled) {
		t.Errorf("handler ended with %v", err)
	}
	// The caller is told its call was canceled.
	err := within(t, 10*time.Second, callErr, "Call return")
	asErrorResponse(t, err, rpc.CodeCanceled)
}

// TestShutdownRace calls Shutdown while connections arrive: every call
// either completes or is refused, and nothing trips the race detector or
// sync.WaitGroup's misuse checks.
func TestShutdownRace(t *testing.T) {
	for range 50 {
		ts := startServer(t, func(s *rpc.Server) { s.Logger = zerolog.Nop() })
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 20 {
					// Refused or cut transports are fine; a server
					// answer other than success is not.
					err := ts.client().Call(context.Background(), "ping", nil, nil)
					var e *rpc.ErrorResponse
					if errors.As(err, &e) {
						t.Errorf("call during shutdown: %v", err)
					}
				}
			}()
		}
		time.Sleep(time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := ts.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown = %v", err)
		}
		cancel()
		wg.Wait()
	}
}

func TestServeStdio(t *testing.T) {
	s := &rpc.Server{Methods: baseMethods(), Authorize: allowMe(), AdoptOpID: true}
	const opID = "op-01JT2M4Q8W3R6ZK5N7YB2C9D0E"
	var out bytes.Buffer
	in := bytes.NewReader([]byte(`{"version":1,"method":"echo","params":{"name":"stdio"},"op_id":"` + opID + `"}` + "\n"))
	s.ServeStdio(context.Background(), in, &out, rpc.Peer{UID: uint32(os.Getuid())})
	resp := mustWire(t, out.Bytes())
	var got echoResult
	if err := json.Unmarshal(resp.Result, &got); err != nil || got.Name != "stdio" || got.OpID != opID {
		t.Errorf("response %s", out.Bytes())
	}

	// Errors, and the peer given by the caller is the one authorized.
	out.Reset()
	s.ServeStdio(context.Background(), strings.NewReader(`{"version":1,"method":"fail.not_found"}`), &out, rpc.Peer{UID: uint32(os.Getuid())})
	wantError(t, mustWire(t, out.Bytes()), "not_found")
	out.Reset()
	s.ServeStdio(context.Background(), strings.NewReader(`{"version":1,"method":"ping"}`), &out, rpc.Peer{UID: uint32(os.Getuid()) + 1})
	wantError(t, mustWire(t, out.Bytes()), "unauthorized")
	out.Reset()
	s.ServeStdio(context.Background(), strings.NewReader(""), &out, rpc.Peer{UID: uint32(os.Getuid())})
	wantError(t, mustWire(t, out.Bytes()), "bad_request")
}

func TestServeStdioCanceled(t *testing.T) {
	s := &rpc.Server{Methods: baseMethods(), Authorize: allowMe()}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.ServeStdio(ctx, strings.NewReader(`{"version":1,"method":"block"}`), &out, rpc.Peer{UID: uint32(os.Getuid())})
	}()
	within(t, 5*time.Second, done, "ServeStdio return")
	// The handler saw ctx's own error: a deadline is a timeout.
	wantError(t, mustWire(t, out.Bytes()), "timeout")

	// Ending one exchange's context does not end the server.
	out.Reset()
	s.ServeStdio(context.Background(), strings.NewReader(`{"version":1,"method":"ping"}`), &out, rpc.Peer{UID: uint32(os.Getuid())})
	if resp := mustWire(t, out.Bytes()); !resp.OK {
		t.Errorf("ServeStdio after a canceled one: %s", out.Bytes())
	}

	// Shutdown cancels a stdio exchange in flight.
	out.Reset()
	done = make(chan struct{})
	go func() {
		defer close(done)
		s.ServeStdio(context.Background(), strings.NewReader(`{"version":1,"method":"block"}`), &out, rpc.Peer{UID: uint32(os.Getuid())})
	}()
	time.Sleep(50 * time.Millisecond)
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer scancel()
	s.Shutdown(sctx)
	within(t, 5*time.Second, done, "ServeStdio return after Shutdown")
	wantError(t, mustWire(t, out.Bytes()), "canceled")
}

// TestConcurrentCalls: 64 clients making 1000 pings each against one
// server, with no error.
func TestConcurrentCalls(t *testing.T) {
	const clients, calls = 64, 1000
	ts := startServer(t, func(s *rpc.Server) { s.Logger = logging.New(io.Discard, "rpctest", zerolog.InfoLevel) })
	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := ts.client()
			for range calls {
				var got pong
				if err := c.Call(context.Background(), "ping", nil, &got); err != nil || !got.Pong {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprint(err))
				}
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	n := clients * calls
	t.Logf("%d calls from %d clients in %v: %.0f calls/s", n, clients, d, float64(n)/d.Seconds())
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d calls failed; first: %v", f, n, firstErr.Load())
	}
}
