package e2e_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// daemonRecords are the records of the sandbox daemon's log.
func (s *sandbox) daemonRecords(t *testing.T) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(s.daemonLog())
	if err != nil {
		t.Fatal(err)
	}
	var recs []map[string]any
	for _, l := range strings.Split(string(b), "\n") {
		var r map[string]any
		if json.Unmarshal([]byte(l), &r) == nil {
			recs = append(recs, r)
		}
	}
	return recs
}

// One command, one trace: every daemon record of a `vm run --rm` (its
// create and the create's stages, its polls, its exec, its delete), and
// of a `banger ping`, has
// the command's trace, the caller's when TRACEPARENT gives one; a
// command without one is a trace of its own, shared by all its calls.
func TestOneCommandOneTrace(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	// Debug: the calls a command makes often (ping, operation.wait) are
	// recorded at debug level.
	s.env = append(s.env, "BANGER_LOG_LEVEL=debug")
	s.daemon()
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	env := s.env
	s.env = append(env, "TRACEPARENT=00-"+trace+"-00f067aa0ba902b7-01")
	s.banger("ping").want(t, 0)
	s.banger("vm", "run", "--rm", "--", "true").want(t, 0)
	s.env = env
	s.banger("vm", "run", "--rm", "--", "true").want(t, 0)

	methods, ops := map[string]bool{}, map[string]bool{}
	for _, r := range s.daemonRecords(t) {
		if r["trace_id"] == trace {
			methods[r["method"].(string)] = true
			ops[r["op_id"].(string)] = true
		}
	}
	for _, m := range []string{"ping", "vm.create.begin", "operation.wait", "vm.exec", "vm.delete"} {
		if !methods[m] {
			t.Errorf("no %s record in the caller's trace (its methods: %v)", m, methods)
		}
	}
	// The second command: its own trace, on every record of its calls.
	var second string
	for _, r := range s.daemonRecords(t) {
		op, _ := r["op_id"].(string)
		tr, _ := r["trace_id"].(string)
		if ops[op] && tr != trace {
			t.Errorf("a record of the first command in another trace: %v", r)
		}
		if r["method"] == "vm.create.begin" && tr != trace && second == "" {
			second = tr
		}
	}
	if len(second) != 32 {
		t.Fatalf("the second command's trace: %q", second)
	}
	seen := map[string]bool{}
	for _, r := range s.daemonRecords(t) {
		if r["trace_id"] == second {
			seen[r["method"].(string)] = true
		}
	}
	for _, m := range []string{"vm.create.begin", "operation.wait", "vm.exec", "vm.delete"} {
		if !seen[m] {
			t.Errorf("no %s record in the second command's trace (%v)", m, seen)
		}
	}
}
