package rpc_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/rpc"
)

func TestParseTraceparent(t *testing.T) {
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	if got, ok := rpc.ParseTraceparent("00-" + trace + "-00f067aa0ba902b7-01"); !ok || got != trace {
		t.Errorf("the W3C example: %q %v", got, ok)
	}
	for _, bad := range []string{
		"",
		"00-" + trace + "-00f067aa0ba902b7",    // no flags
		"01-" + trace + "-00f067aa0ba902b7-01", // another version
		"00-" + strings.ToUpper(trace) + "-00f067aa0ba902b7-01",   // uppercase
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace
		"00-" + trace + "-0000000000000000-01",                    // zero span
		"00-" + trace + "x00f067aa0ba902b7-01",                    // separator
		"00-" + trace[:31] + "g-00f067aa0ba902b7-01",              // not hex
		"00-" + trace + "-00f067aa0ba902b7-01 ",                   // trailing space
	} {
		if got, ok := rpc.ParseTraceparent(bad); ok {
			t.Errorf("%q accepted as %q", bad, got)
		}
	}
	id := rpc.NewTraceID()
	if !rpc.ValidTraceID(id) || id == rpc.NewTraceID() {
		t.Errorf("minted trace ids: %q", id)
	}
	if got, ok := rpc.ParseTraceparent(rpc.Traceparent(id)); !ok || got != id {
		t.Errorf("Traceparent(%s) parses as %q %v", id, got, ok)
	}
}

// A call made in a trace carries it: the handler and every record of the
// call have its trace id beside the op id. A request without one, or
// with a malformed one, is served in a trace of its own, never refused.
func TestTheTraceGoesWithTheCall(t *testing.T) {
	ts := startServer(t)
	trace := rpc.NewTraceID()
	var got string
	if err := ts.client().Call(rpc.WithTrace(context.Background(), trace), "trace", nil, &got); err != nil {
		t.Fatal(err)
	}
	if got != trace {
		t.Errorf("the handler's trace %q, want %q", got, trace)
	}
	for _, msg := range []string{"traced record", "rpc completed"} {
		ts.Logs.waitRecord(t, func(r map[string]any) bool {
			return r["msg"] == msg && r["trace_id"] == trace && strings.HasPrefix(r["op_id"].(string), "op-")
		})
	}

	seen := map[string]bool{trace: true}
	for _, tp := range []string{"", "00-zz-yy-01", `00-` + trace + `-0000000000000000-01`} {
		req, _ := json.Marshal(rpc.Request{Version: rpc.Version, Method: "trace", Traceparent: tp})
		resp := mustWire(t, rawExchange(t, ts.Sock, append(req, '\n'), true))
		var own string
		if !resp.OK || json.Unmarshal(resp.Result, &own) != nil || !rpc.ValidTraceID(own) || seen[own] {
			t.Errorf("traceparent %q: %+v, trace %q", tp, resp, own)
		}
		seen[own] = true
	}
}

func TestParseTrace(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
	got, ok := rpc.ParseTrace(tp)
	if want := (rpc.Trace{ID: "4bf92f3577b34da6a3ce929d0e0e4736", SpanID: "00f067aa0ba902b7", Flags: "00"}); !ok || got != want {
		t.Fatalf("ParseTrace(%s) = %+v, %v", tp, got, ok)
	}
	if got.Traceparent() != tp {
		t.Errorf("round trip: %s", got.Traceparent())
	}
	// No span: each traceparent names a new one, sampled.
	a, b := rpc.Trace{ID: got.ID}.Traceparent(), rpc.Trace{ID: got.ID}.Traceparent()
	pa, okA := rpc.ParseTrace(a)
	if !okA || a == b || pa.ID != got.ID || pa.Flags != "01" {
		t.Errorf("traceparents without a span: %s, %s", a, b)
	}
}

// whereMethod answers the trace its handler stands at.
func whereMethod(s *rpc.Server) {
	s.Methods["where"] = rpc.Handle(func(ctx context.Context, _ rpc.NoParams) (rpc.Trace, error) {
		return rpc.TraceFrom(ctx), nil
	})
}

// The caller's span and flags reach the handler, and a call the handler
// makes on names the same parent: with no span of its own (no Spans), a
// server passes its caller's on.
func TestTheCallersSpanGoesOn(t *testing.T) {
	next := startServer(t, whereMethod)
	ts := startServer(t, whereMethod, func(s *rpc.Server) {
		s.Methods["forward"] = rpc.Handle(func(ctx context.Context, _ rpc.NoParams) (rpc.Trace, error) {
			var got rpc.Trace
			err := next.client().Call(ctx, "where", nil, &got)
			return got, err
		})
	})
	caller := rpc.Trace{ID: rpc.NewTraceID(), SpanID: "00f067aa0ba902b7", Flags: "00"}
	ctx := rpc.WithSpan(context.Background(), caller)
	for _, m := range []string{"where", "forward"} {
		var got rpc.Trace
		if err := ts.client().Call(ctx, m, nil, &got); err != nil || got != caller {
			t.Errorf("%s: %+v, %v; want %+v", m, got, err, caller)
		}
	}
}

// fakeSpans records the spans a server starts and ends; each span
// stands at span id "5a5a5a5a5a5a5a5a" of the caller's trace.
type fakeSpans struct {
	mu    sync.Mutex
	calls []string // "method caller-span end-code", once ended
}

const fakeSpanID = "5a5a5a5a5a5a5a5a"

func (f *fakeSpans) StartCall(ctx context.Context, method string) (context.Context, func(string)) {
	tc := rpc.TraceFrom(ctx)
	inner := rpc.WithSpan(ctx, rpc.Trace{ID: tc.ID, SpanID: fakeSpanID})
	return inner, func(code string) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.calls = append(f.calls, method+" "+tc.SpanID+" "+code)
	}
}

func (f *fakeSpans) ended() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// A server with Spans starts one span per call that reaches its handler,
// in the caller's trace, runs the handler in it, and ends it with the
// call's error code; a stream's span ends with its session.
func TestServerSpans(t *testing.T) {
	spans := &fakeSpans{}
	ts := startServer(t, whereMethod, func(s *rpc.Server) {
		s.Spans = spans
		s.Streams = rpc.Streams{"lines": rpc.HandleStream(func(ctx context.Context, _ rpc.NoParams) (bool, rpc.StreamFunc, error) {
			return true, func(ctx context.Context, conn net.Conn) error {
				_, err := io.Copy(io.Discard, conn)
				return err
			}, nil
		})}
	})
	ctx := rpc.WithSpan(context.Background(), rpc.Trace{ID: rpc.NewTraceID(), SpanID: "00f067aa0ba902b7"})
	var got rpc.Trace
	if err := ts.client().Call(ctx, "where", nil, &got); err != nil || got.SpanID != fakeSpanID {
		t.Errorf("the handler stands at %+v (%v), not in its span", got, err)
	}
	ts.client().Call(ctx, "fail.not_found", nil, nil)
	ts.client().Call(ctx, "no.such.method", nil, nil)
	st, err := ts.client().OpenStream(ctx, "lines", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if n := len(spans.ended()); n != 2 {
		t.Errorf("%d spans ended before the session did: %v", n, spans.ended())
	}
	st.Close()
	waitForSpans := time.Now().Add(5 * time.Second)
	for len(spans.ended()) < 3 && time.Now().Before(waitForSpans) {
		time.Sleep(5 * time.Millisecond)
	}
	want := []string{"where 00f067aa0ba902b7 ", "fail.not_found 00f067aa0ba902b7 not_found", "lines 00f067aa0ba902b7 "}
	if got := spans.ended(); !slices.Equal(got, want) {
		t.Errorf("spans %q, want %q", got, want)
	}
}
