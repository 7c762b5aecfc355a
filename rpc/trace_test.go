package rpc_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

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
