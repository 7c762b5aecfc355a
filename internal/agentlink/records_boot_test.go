package agentlink_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"banger/internal/agentlink"
	"banger/internal/session"
	"banger/rpc"
)

// A real agent's records reach the host: those of its boot, kept until a
// host read them, and those of a call, with the call's op id and trace;
// once the host reads them, the console has only warnings of the agent's.
func TestAgentRecordsReachTheHost(t *testing.T) {
	g := needBusyboxGuest(t)
	v := launch(t, g, "box-records")
	v.dumpConsoleOnFailure(t)
	link := waitReady(t, v)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	recs := make(chan agentlink.GuestRecord, 256)
	go link.CopyRecords(ctx, func(r agentlink.GuestRecord) { recs <- r })
	// await returns the first record that match accepts.
	await := func(what string, match func(agentlink.GuestRecord) bool) agentlink.GuestRecord {
		t.Helper()
		for {
			select {
			case r := <-recs:
				if match(r) {
					return r
				}
			case <-ctx.Done():
				t.Fatalf("no record %s", what)
			}
		}
	}
	await("of the boot", func(r agentlink.GuestRecord) bool { return r.Msg == "agent up; waiting for the host" })

	const op = "op-01JT2M4Q8W3R6ZK5N7YB2C9D0E"
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	callCtx := rpc.WithTrace(rpc.WithOpID(ctx, op), trace)
	s, err := link.OpenSession(callCtx, agentlink.MethodExec, sh("exit 3"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := session.Run(s, session.Stdio{})
	if err != nil || st.Code != 3 {
		t.Fatalf("exec: %+v, %v", st, err)
	}
	ofCall := func(msg string) func(agentlink.GuestRecord) bool {
		return func(r agentlink.GuestRecord) bool { return r.Msg == msg && r.OpID == op }
	}
	started := await("of the command's start", ofCall("command started"))
	ended := await("of the command's end", ofCall("command ended"))
	if started.TraceID != trace || ended.TraceID != trace || ended.Method != agentlink.MethodExec {
		t.Errorf("the call's records: %+v, %+v", started, ended)
	}
	if v, _ := field(ended, "code"); v != float64(3) {
		t.Errorf("the command's end: code %v", v)
	}
	if v, _ := field(started, "program"); v != "sh" {
		t.Errorf("the command's start: program %v", v)
	}
	if c := v.console(t); strings.Contains(c, "command started") {
		t.Errorf("the agent's info records still go to the console once the host reads them:\n%s", c)
	}
}
