package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"banger/internal/errdefs"
	"banger/rpc"
)

// fakeServer accepts connections on a fresh socket and hands each to
// serve, for tests of what the client does with odd servers.
func fakeServer(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "f.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(20 * time.Second))
				serve(conn)
			}()
		}
	}()
	return sock
}

func TestClientTypedError(t *testing.T) {
	ts := startServer(t)
	err := ts.client().Call(context.Background(), "fail.not_found", nil, nil)
	e := asErrorResponse(t, err, rpc.CodeNotFound)
	if !strings.HasPrefix(e.Message, `vm "box" not found`) {
		t.Errorf("message %q", e.Message)
	}
	want := "not_found: " + e.Message + " (" + e.OpID + ")"
	if err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}
	// The error is the *ErrorResponse itself, and survives wrapping.
	if _, ok := err.(*rpc.ErrorResponse); !ok {
		t.Errorf("Call returned %T, want *rpc.ErrorResponse", err)
	}
	wrapped := fmt.Errorf("vm start box: %w", err)
	var e2 *rpc.ErrorResponse
	if !errors.As(wrapped, &e2) || e2 != e || rpc.CodeOf(wrapped) != rpc.CodeNotFound {
		t.Errorf("errors.As through wrapping: %v", wrapped)
	}
	// Plain handler errors and context errors keep their codes on the way.
	for method, code := range map[string]string{
		"fail.plain":    rpc.CodeOperationFailed,
		"fail.canceled": rpc.CodeCanceled,
		"fail.timeout":  rpc.CodeTimeout,
		"vm.nope":       rpc.CodeUnknownMethod,
	} {
		err := ts.client().Call(context.Background(), method, nil, nil)
		asErrorResponse(t, err, code)
		if rpc.CodeOf(err) != code {
			t.Errorf("CodeOf(%v) = %q", err, rpc.CodeOf(err))
		}
	}
}

func TestErrorResponseFormat(t *testing.T) {
	e := &rpc.ErrorResponse{Code: "conflict", Message: "vm box is running"}
	if got := e.Error(); got != "conflict: vm box is running" {
		t.Errorf("Error() = %q", got)
	}
	e.OpID = "op-01JT2M4Q8W3R6ZK5N7YB2C9D0E"
	if got := e.Error(); got != "conflict: vm box is running (op-01JT2M4Q8W3R6ZK5N7YB2C9D0E)" {
		t.Errorf("Error() = %q", got)
	}
	e = rpc.Errorf(rpc.CodeNotFound, "vm %q not found", "box")
	if e.Code != "not_found" || e.Message != `vm "box" not found` || e.OpID != "" {
		t.Errorf("Errorf = %+v", e)
	}
	// The wire form: op_id omitted when empty.
	b, _ := json.Marshal(e)
	if string(b) != `{"code":"not_found","message":"vm \"box\" not found"}` {
		t.Errorf("json = %s", b)
	}
}

func TestCodeOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{rpc.Errorf(rpc.CodeConflict, "x"), "conflict"},
		{fmt.Errorf("a: %w", rpc.Errorf(rpc.CodeNotRunning, "x")), "not_running"},
		{context.Canceled, "canceled"},
		{fmt.Errorf("a: %w", context.DeadlineExceeded), "timeout"},
		{errors.New("x"), "operation_failed"},
		{rpc.ErrUnreachable, "operation_failed"},
		{errdefs.Errorf(errdefs.ErrNotFound, "x"), "not_found"},
		{fmt.Errorf("a: %w", errdefs.Errorf(errdefs.ErrConflict, "x")), "conflict"},
		{fmt.Errorf("a: %w", errdefs.ErrInvalid), "invalid_params"},
	} {
		if got := rpc.CodeOf(tc.err); got != tc.want {
			t.Errorf("CodeOf(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// TestOpIDForwarded reads the request envelope the client writes.
func TestOpIDForwarded(t *testing.T) {
	got := make(chan []byte, 1)
	sock := fakeServer(t, func(conn net.Conn) {
		var raw json.RawMessage
		if err := json.NewDecoder(conn).Decode(&raw); err != nil {
			t.Errorf("decode request: %v", err)
		}
		got <- raw
		conn.Write([]byte(`{"ok":true}` + "\n"))
	})
	c := &rpc.Client{Socket: sock}
	const opID = "op-01JT2M4Q8W3R6ZK5N7YB2C9D0E"
	if err := c.Call(rpc.WithOpID(context.Background(), opID), "vm.start", map[string]string{"name": "box"}, nil); err != nil {
		t.Fatal(err)
	}
	raw := within(t, 5*time.Second, got, "request")
	var req map[string]any
	if err := json.Unmarshal(raw, &req); err != nil {
		t.Fatal(err)
	}
	if req["op_id"] != opID || req["method"] != "vm.start" || req["version"] != float64(1) {
		t.Errorf("request = %s", raw)
	}
	if p, _ := req["params"].(map[string]any); p["name"] != "box" {
		t.Errorf("params = %v", req["params"])
	}

	// No op id on the context: no op_id field at all (omitempty), and no
	// params field for nil params.
	if err := c.Call(context.Background(), "ping", nil, nil); err != nil {
		t.Fatal(err)
	}
	raw = within(t, 5*time.Second, got, "request")
	if string(raw) != `{"version":1,"method":"ping"}` {
		t.Errorf("request = %s", raw)
	}
}

func TestAdoptOpID(t *testing.T) {
	const inbound = "op-01JT2M4Q8W3R6ZK5N7YB2C9D0E"
	malformed := []string{
		"op-123",
		"hello",
		"01JT2M4Q8W3R6ZK5N7YB2C9D0E",     // no prefix
		"op-01JT2M4Q8W3R6ZK5N7YB2C9D0EX", // 27 characters
		"op-01JT2M4Q8W3R6ZK5N7YB2C9D0U",  // U is not Crockford base32
		"op-81JT2M4Q8W3R6ZK5N7YB2C9D0E",  // overflows 128 bits
		"op-01JT2M4Q8W3R6ZK5N7YB2C9D0\n",
		`op-"}{"ok":true`,
	}
	for _, adopt := range []bool{true, false} {
		ts := startServer(t, func(s *rpc.Server) { s.AdoptOpID = adopt })
		call := func(ctx context.Context) string {
			t.Helper()
			var got string
			if err := ts.client().Call(ctx, "op", nil, &got); err != nil {
				t.Fatal(err)
			}
			if !rpc.ValidOpID(got) {
				t.Fatalf("handler op id %q is not well-formed", got)
			}
			return got
		}
		t.Run(fmt.Sprintf("adopt=%v", adopt), func(t *testing.T) {
			got := call(rpc.WithOpID(context.Background(), inbound))
			if adopt && got != inbound {
				t.Errorf("well-formed inbound op id not adopted: got %s", got)
			}
			if !adopt && got == inbound {
				t.Errorf("server adopted an op id without AdoptOpID")
			}
			// Error responses carry the adopted id too.
			err := ts.client().Call(rpc.WithOpID(context.Background(), inbound), "fail.plain", nil, nil)
			e := asErrorResponse(t, err, rpc.CodeOperationFailed)
			if (e.OpID == inbound) != adopt {
				t.Errorf("error op id %s (adopt=%v)", e.OpID, adopt)
			}
			for _, bad := range malformed {
				if got := call(rpc.WithOpID(context.Background(), bad)); got == bad {
					t.Errorf("malformed op id %q adopted", bad)
				}
			}
			// Absent (older peer): a fresh id each call.
			a, b := call(context.Background()), call(context.Background())
			if a == b || a == inbound {
				t.Errorf("fresh op ids %s, %s", a, b)
			}
		})
	}
}

func TestCallDeadline(t *testing.T) {
	ts := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := ts.client().Call(ctx, "block", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Call = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Call returned after %v", d)
	}
	if rpc.CodeOf(err) != rpc.CodeTimeout {
		t.Errorf("CodeOf = %q", rpc.CodeOf(err))
	}
	// The connection's deadline and the context's timer are the same
	// instant; whichever fires first, the caller sees DeadlineExceeded.
	for i := range 50 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+i%5)*time.Millisecond)
		err := ts.client().Call(ctx, "block", nil, nil)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("short deadline %d: Call = %v, want context.DeadlineExceeded", i, err)
		}
	}
}

func TestCallCanceledBefore(t *testing.T) {
	ts := startServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ts.client().Call(ctx, "ping", nil, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Call = %v, want context.Canceled", err)
	}
}

func TestClientUnreachable(t *testing.T) {
	dir := shortTempDir(t)
	c := &rpc.Client{Socket: filepath.Join(dir, "nobody.sock")}
	err := c.Call(context.Background(), "ping", nil, nil)
	if !errors.Is(err, rpc.ErrUnreachable) || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("Call = %v", err)
	}
	var e *rpc.ErrorResponse
	if errors.As(err, &e) {
		t.Errorf("unreachable reported as a server answer: %v", err)
	}
	// A socket file that nobody serves any more.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	c.Socket = stale
	if err := c.Call(context.Background(), "ping", nil, nil); !errors.Is(err, rpc.ErrUnreachable) || !strings.Contains(err.Error(), "refused") {
		t.Errorf("Call = %v", err)
	}
}

func TestClientOddServers(t *testing.T) {
	cases := []struct {
		name, answer string
		code         string // the *ErrorResponse code, or "" for a transport error
		msg          string
	}{
		{"closes without answering", "", "", "connection closed without a response"},
		{"answers garbage", "<html>", "", "read response"},
		{"ok false without error", `{"ok":false}`, rpc.CodeOperationFailed, "rpc error"},
		{"result of the wrong type", `{"ok":true,"result":"not an object"}`, "", "decode result"},
		{"error from a newer server", `{"ok":false,"error":{"code":"quota_exceeded","message":"too many VMs","op_id":"op-01JT2M4Q8W3R6ZK5N7YB2C9D0E","hint":"x"},"extra":1}`, "quota_exceeded", "too many VMs"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sock := fakeServer(t, func(conn net.Conn) {
				json.NewDecoder(conn).Decode(new(json.RawMessage))
				conn.Write([]byte(tc.answer))
			})
			var result echoResult
			err := (&rpc.Client{Socket: sock}).Call(context.Background(), "ping", nil, &result)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Call = %v, want %q", err, tc.msg)
			}
			var e *rpc.ErrorResponse
			if got := errors.As(err, &e); got != (tc.code != "") || got && e.Code != tc.code {
				t.Errorf("Call = %v (%T), want code %q", err, err, tc.code)
			}
			if errors.Is(err, rpc.ErrUnreachable) {
				t.Errorf("a server that answered is not unreachable: %v", err)
			}
		})
	}
}

func TestClientParamsEncodeError(t *testing.T) {
	c := &rpc.Client{Socket: "/nonexistent/never/dialed.sock"}
	err := c.Call(context.Background(), "echo", make(chan int), nil)
	if err == nil || !strings.Contains(err.Error(), "encode params of echo") || errors.Is(err, rpc.ErrUnreachable) {
		t.Errorf("Call = %v", err)
	}
}

func TestOpIDs(t *testing.T) {
	prev := ""
	seen := map[string]bool{}
	for range 1000 {
		id := rpc.NewOpID()
		if !rpc.ValidOpID(id) || len(id) != 29 || !strings.HasPrefix(id, "op-") {
			t.Fatalf("NewOpID() = %q", id)
		}
		if seen[id] {
			t.Fatalf("NewOpID() repeated %q", id)
		}
		seen[id] = true
		// Minted in sequence, ids sort by time (monotonic within a ms).
		if id <= prev {
			t.Fatalf("op ids out of order: %s then %s", prev, id)
		}
		prev = id
	}
	for _, s := range []string{"", "op-", "op-01JT2M4Q8W3R6ZK5N7YB2C9D0", "OP-01JT2M4Q8W3R6ZK5N7YB2C9D0E", " op-01JT2M4Q8W3R6ZK5N7YB2C9D0E"} {
		if rpc.ValidOpID(s) {
			t.Errorf("ValidOpID(%q) = true", s)
		}
	}
	ctx := rpc.WithOpID(context.Background(), "op-01JT2M4Q8W3R6ZK5N7YB2C9D0E")
	if rpc.OpIDFrom(ctx) != "op-01JT2M4Q8W3R6ZK5N7YB2C9D0E" || rpc.OpIDFrom(context.Background()) != "" {
		t.Error("OpIDFrom does not return what WithOpID stored")
	}
}

func TestHandleParams(t *testing.T) {
	h := rpc.Handle(func(_ context.Context, p *echoParams) (int, error) {
		if p == nil {
			return -1, nil
		}
		return p.N, nil
	})
	for raw, want := range map[string]any{
		``:              -1,
		`null`:          -1,
		` null `:        -1,
		`{"n":4}`:       4,
		`{"n":4,"x":1}`: 4,
	} {
		got, err := h(context.Background(), json.RawMessage(raw))
		if err != nil || got != want {
			t.Errorf("Handle(%q) = %v, %v; want %v", raw, got, err, want)
		}
	}
	_, err := h(context.Background(), json.RawMessage(`{"n":"x"}`))
	if rpc.CodeOf(err) != rpc.CodeInvalidParams {
		t.Errorf("bad params: %v", err)
	}
}

// CommandClient: the test binary re-executed as the stdio helper (see
// TestMain).

func stdioClient(t *testing.T) (*rpc.CommandClient, *syncBuffer) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("RPC_TEST_STDIO", "1")
	stderr := &syncBuffer{}
	return &rpc.CommandClient{Path: exe, Stderr: stderr}, stderr
}

func TestCommandClient(t *testing.T) {
	c, stderr := stdioClient(t)
	var got echoResult
	if err := c.Call(context.Background(), "echo", echoParams{Name: "helper", N: 9}, &got); err != nil {
		t.Fatalf("Call = %v\nstderr:\n%s", err, stderr)
	}
	if got.Name != "helper" || got.N != 9 || !rpc.ValidOpID(got.OpID) {
		t.Errorf("result = %+v", got)
	}

	// The op id of the context crosses the process boundary, is adopted,
	// and stamps the helper's records.
	const opID = "op-01JT2M4Q8W3R6ZK5N7YB2C9D0E"
	var seen string
	if err := c.Call(rpc.WithOpID(context.Background(), opID), "op", nil, &seen); err != nil {
		t.Fatal(err)
	}
	if seen != opID {
		t.Errorf("helper used op id %q, want %q", seen, opID)
	}
	rec := stderr.waitRecord(t, func(r map[string]any) bool { return r["msg"] == "helper rpc completed" && r["op_id"] == opID })
	if rec["applet"] != "bangerd-root" || rec["method"] != "op" || rec["uid"] != float64(os.Getuid()) {
		t.Errorf("helper record = %v", rec)
	}
	stderr.waitRecord(t, func(r map[string]any) bool { return r["msg"] == "handler record" && r["op_id"] == opID })

	// A handler error comes back typed, with its code and op id.
	err := c.Call(rpc.WithOpID(context.Background(), opID), "fail.not_found", nil, nil)
	e := asErrorResponse(t, err, rpc.CodeNotFound)
	if e.OpID != opID || !strings.Contains(err.Error(), "("+opID+")") {
		t.Errorf("error = %v", err)
	}
	err = c.Call(context.Background(), "vm.nope", nil, nil)
	asErrorResponse(t, err, rpc.CodeUnknownMethod)
}

func TestCommandClientFailures(t *testing.T) {
	c, stderr := stdioClient(t)
	// The helper dies without answering.
	err := c.Call(context.Background(), "crash", nil, nil)
	if !errors.Is(err, rpc.ErrUnreachable) || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("crash: Call = %v\nstderr:\n%s", err, stderr)
	}
	// The helper cannot be started.
	missing := &rpc.CommandClient{Path: filepath.Join(shortTempDir(t), "no-such-helper")}
	if err := missing.Call(context.Background(), "ping", nil, nil); !errors.Is(err, rpc.ErrUnreachable) {
		t.Errorf("missing helper: Call = %v", err)
	}
	// Canceling the context stops the helper (SIGTERM) and returns at once.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.Call(ctx, "block", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("block: Call = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("canceled helper call took %v (SIGTERM not honored?)", d)
	}
}

// TestCommandClientStderrNil: with no Stderr the helper's records go
// nowhere and the call still works.
func TestCommandClientStderrNil(t *testing.T) {
	c, _ := stdioClient(t)
	c.Stderr = nil
	if err := c.Call(context.Background(), "ping", nil, nil); err != nil {
		t.Fatal(err)
	}
}

// A client that checks its server refuses one run by a user it does not
// trust before it writes anything, and calls one it trusts as usual.
func TestClientChecksItsServer(t *testing.T) {
	got := make(chan []byte, 4)
	sock := fakeServer(t, func(c net.Conn) {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 4096)
		n, _ := c.Read(b)
		got <- b[:n]
		if n > 0 {
			c.Write([]byte(`{"ok":true,"result":"forged"}` + "\n"))
		}
	})
	me := uint32(os.Getuid())
	var res string
	err := (&rpc.Client{Socket: sock, Server: rpc.AllowUIDs(me + 1)}).Call(context.Background(), "vm.exec", map[string]string{"env": "API_TOKEN=secret"}, &res)
	var re *rpc.ErrorResponse
	if !errors.As(err, &re) || re.Code != rpc.CodeUnauthorized || !strings.Contains(re.Message, "sending it nothing") {
		t.Fatalf("an untrusted server: %v", err)
	}
	if b := <-got; len(b) != 0 {
		t.Errorf("the untrusted server got %q", b)
	}
	if _, err := (&rpc.Client{Socket: sock, Server: rpc.AllowUIDs(me + 1)}).OpenStream(context.Background(), "vm.exec", nil, nil); rpc.CodeOf(err) != rpc.CodeUnauthorized {
		t.Errorf("a stream to an untrusted server: %v", err)
	}
	if b := <-got; len(b) != 0 {
		t.Errorf("the untrusted server got %q", b)
	}
	if err := (&rpc.Client{Socket: sock, Server: rpc.AllowUIDs(me)}).Call(context.Background(), "ping", nil, &res); err != nil || res != "forged" {
		t.Errorf("a trusted server: %q %v", res, err)
	}
}
