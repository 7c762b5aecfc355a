package e2e_test

import (
	"regexp"
	"testing"
)

// createdVM finds the VM name and op id in a create's progress line.
var createdVM = regexp.MustCompile(`vm\.create (\S+) \((op-[0-9A-Z]{26})\)`)

// The guest's records join the host's: a vm run's agent records (its
// copy's untar, its command's start and end with the status) are in the
// daemon's log as banger-agent's, with the VM's name and the op id and
// trace of the call that caused them: a cold VM's, and a warm one's
// (restored from a snapshot of another guest, whose records are not its
// own). The only other VM in a run's trace is the standby its create
// makes, under the create's op id.
func TestGuestRecordsJoinTheDaemonLog(t *testing.T) {
	s, repo := workspaceSandbox(t)
	env := s.env
	for i, trace := range []string{"4bf92f3577b34da6a3ce929d0e0e4736", "5bf92f3577b34da6a3ce929d0e0e4737"} {
		s.env = append(env, "TRACEPARENT=00-"+trace+"-00f067aa0ba902b7-01")
		r := s.banger("vm", "run", "--rm", repo, "--", "sh", "-c", "exit 3").want(t, 3)
		m := createdVM.FindStringSubmatch(r.stderr)
		if m == nil {
			t.Fatalf("run %d: no create line in %q", i, r.stderr)
		}
		name, createOp := m[1], m[2]
		var execOps []string
		agent := map[string]map[string]any{} // by msg
		for _, rec := range s.daemonRecords(t) {
			if rec["trace_id"] != trace {
				continue
			}
			if rec["applet"] == "bangerd" && rec["method"] == "vm.exec" {
				execOps = append(execOps, rec["op_id"].(string))
			}
			if rec["applet"] != "banger-agent" {
				continue
			}
			switch {
			case rec["vm"] == name:
				agent[rec["msg"].(string)] = rec
			case rec["vm"] == "standby" && rec["op_id"] == createOp:
				// The standby the create makes for the next one: its own
				// records, in the create's trace.
			default:
				t.Errorf("run %d: a record of the trace of %s names VM %v: %v", i, name, rec["vm"], rec)
			}
		}
		if len(execOps) == 0 {
			t.Fatalf("run %d: no vm.exec record in the trace", i)
		}
		for _, msg := range []string{"untar done", "command started", "command ended"} {
			if agent[msg] == nil {
				t.Errorf("run %d: no agent record %q in the trace (the agent's: %v)", i, msg, agent)
			}
		}
		if rec := agent["command ended"]; rec != nil {
			if rec["code"] != 3.0 || rec["method"] != "agent.exec" || rec["op_id"] != execOps[len(execOps)-1] {
				t.Errorf("run %d: the command's end: %v (vm.exec ops %v)", i, rec, execOps)
			}
		}
	}
}
