package agentlink_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"banger/internal/agentlink"
	"banger/logging"
	"banger/rpc"
)

// fakeRecords serves agent.logs with the lines lines returns (given op,
// the op id of the call the host makes first), then a record "end".
func fakeRecords(t *testing.T, lines func(op string) []string, op string) (context.Context, *agentlink.Link) {
	t.Helper()
	sock := sockPath(t)
	fakeAgentServing(t, sock, nil, rpc.Methods{agentlink.MethodPing: rpc.Handle(func(context.Context, rpc.NoParams) (agentlink.PingResult, error) {
		return agentlink.PingResult{}, nil
	})}, rpc.Streams{agentlink.MethodLogs: rpc.HandleStream(func(context.Context, rpc.NoParams) (struct{}, rpc.StreamFunc, error) {
		return struct{}{}, func(ctx context.Context, conn net.Conn) error {
			for _, l := range lines(op) {
				if _, err := conn.Write([]byte(l + "\n")); err != nil {
					return err
				}
			}
			// Past the rate's refill of a token or two.
			time.Sleep(50 * time.Millisecond)
			conn.Write([]byte(`{"level":"info","msg":"end"}` + "\n"))
			<-ctx.Done()
			return nil
		}, nil
	})})
	return waitLink(t, sock)
}

// copyUntilEnd copies the link's records until the "end" record.
func copyUntilEnd(t *testing.T, ctx context.Context, link *agentlink.Link) []agentlink.GuestRecord {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var got []agentlink.GuestRecord
	err := link.CopyRecords(ctx, func(r agentlink.GuestRecord) {
		if r.Msg == "end" {
			cancel()
			return
		}
		got = append(got, r)
	})
	if ctx.Err() == nil {
		t.Fatalf("the records ended before the last: %v", err)
	}
	return got
}

func field(r agentlink.GuestRecord, key string) (any, bool) {
	for _, f := range r.Fields {
		if f.Key == key {
			return f.Value, true
		}
	}
	return nil, false
}

// The guest's records are hostile until checked: the host takes the op
// and trace only of a call it made on the link, keeps a guest's time only
// close to its arrival, strips control characters, refuses odd levels,
// lines, keys and shapes, and says how many it dropped.
func TestHostileAgentRecords(t *testing.T) {
	const op = "op-01JT2M4Q8W3R6ZK5N7YB2C9D0E"
	const forged = "op-01JT2M4Q8W3R6ZK5N7YB2C9D0F"
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	now := time.Now().UTC()
	recent := now.Add(-time.Second).Format(logging.TimeFormat)
	old := now.Add(-time.Hour).Format(logging.TimeFormat)
	ctx, link := fakeRecords(t, func(op string) []string {
		return []string{
			`{"level":"info","time":"` + recent + `","op_id":"` + op + `","trace_id":"ffffffffffffffffffffffffffffffff","method":"agent.exec","msg":"command ended","code":3,"duration_ms":1.5}`,
			`{"level":"info","time":"` + old + `","op_id":"` + forged + `","trace_id":"` + trace + `","msg":"into another trace"}`,
			`{"level":"warn","msg":"\u001b[2J\u001b]0;owned\u0007cleared","error":"a\u001b[31mred","argv":["sh","-c","\u001bx"],"vm":"other","applet":"bangerd","Bad-Key":1,"nested":{"a":1},"ok":true}`,
			`{"level":"fatal","msg":"no such level here"}`,
			`not json`,
			`{"level":"info","msg":"` + strings.Repeat("x", agentlink.MaxRecordLine) + `"}`,
			`{"level":"info","msg":"after the refused"}`,
		}
	}, op)
	// A call of the host's, with the op id and trace the first record
	// names.
	callCtx := rpc.WithTrace(rpc.WithOpID(ctx, op), trace)
	if _, err := link.Ping(callCtx); err != nil {
		t.Fatal(err)
	}
	got := copyUntilEnd(t, ctx, link)
	if len(got) != 5 {
		t.Fatalf("got %d records, want 5: %+v", len(got), got)
	}
	first := got[0]
	if first.OpID != op || first.TraceID != trace || first.Method != "agent.exec" {
		t.Errorf("the record of the host's call: op %q trace %q method %q", first.OpID, first.TraceID, first.Method)
	}
	if v, _ := field(first, "code"); v != float64(3) {
		t.Errorf("code = %v", v)
	}
	if want, _ := time.Parse(logging.TimeFormat, recent); !first.Time.Equal(want) {
		t.Errorf("a record's recent time %v was not kept (%v)", first.Time, want)
	}
	forgedRec := got[1]
	if forgedRec.OpID != "" || forgedRec.TraceID != "" {
		t.Errorf("a record naming a call the host did not make kept op %q trace %q", forgedRec.OpID, forgedRec.TraceID)
	}
	if time.Since(forgedRec.Time) > time.Minute {
		t.Errorf("a record an hour old kept its time %v", forgedRec.Time)
	}
	hostile := got[2]
	if strings.ContainsAny(hostile.Msg, "\x1b\x07") || !strings.HasSuffix(hostile.Msg, "cleared") {
		t.Errorf("msg %q", hostile.Msg)
	}
	if v, _ := field(hostile, "error"); strings.Contains(fmt.Sprint(v), "\x1b") {
		t.Errorf("error %q keeps an escape", v)
	}
	if v, _ := field(hostile, "argv"); fmt.Sprint(v) != "[sh -c x]" {
		t.Errorf("argv %q", v)
	}
	for _, k := range []string{"vm", "applet", "Bad-Key", "nested"} {
		if _, ok := field(hostile, k); ok {
			t.Errorf("field %s was passed on", k)
		}
	}
	if v, _ := field(hostile, "ok"); v != true {
		t.Errorf("ok = %v", v)
	}
	dropped := got[3]
	for k, want := range map[string]float64{"malformed": 2, "too_long": 1, "over_rate": 0} {
		if v, _ := field(dropped, k); v != want {
			t.Errorf("the host's count of records dropped as %s: %v, want %v (%+v)", k, v, want, dropped)
		}
	}
	if got[4].Msg != "after the refused" {
		t.Errorf("the record after the refused: %+v", got[4])
	}

	// As the daemon writes them: the agent's applet, the VM's name, the
	// record's own time.
	var buf bytes.Buffer
	relay := logging.NewRelay(&buf, "banger-agent", zerolog.InfoLevel)
	first.Log(&relay, "box")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("%q: %v", buf.String(), err)
	}
	for k, want := range map[string]any{"applet": "banger-agent", "vm": "box", "op_id": op, "trace_id": trace, "msg": "command ended", "time": recent, "level": "info"} {
		if rec[k] != want {
			t.Errorf("written record's %s = %v, want %v (%s)", k, rec[k], want, buf.String())
		}
	}
}

// A guest that floods its records gets the rate's worth written, and the
// count of the rest.
func TestAgentRecordsFlood(t *testing.T) {
	const n = 5000
	ctx, link := fakeRecords(t, func(string) []string {
		lines := make([]string, n)
		for i := range lines {
			lines[i] = fmt.Sprintf(`{"level":"info","msg":"flood","i":%d}`, i)
		}
		return lines
	}, "")
	start := time.Now()
	got := copyUntilEnd(t, ctx, link)
	took := time.Since(start)
	passed, overRate := 0, 0.0
	for _, r := range got {
		if r.Msg == "flood" {
			passed++
		}
		if v, ok := field(r, "over_rate"); ok {
			overRate += v.(float64)
		}
	}
	// The burst and the rate for the time the flood took, no more.
	if limit := 1000 + int(200*took.Seconds()) + 1; passed > limit {
		t.Errorf("%d of %d flooded records written in %v (limit %d)", passed, n, took, limit)
	}
	if passed+int(overRate) < n {
		t.Errorf("%d written and %v counted over the rate, of %d", passed, overRate, n)
	}
}
