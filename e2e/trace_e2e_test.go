package e2e_test

import (
	"encoding/json"
	"os"
	"regexp"
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

// createLine is a create's first progress line, which ends with its op id.
var createLine = regexp.MustCompile(`(?m)^vm\.create \S+ \((op-[0-9A-HJKMNP-TV-Z]{26})\)$`)

// The trace of a command from any op id it printed: `banger trace OP` of
// a `vm run ./repo`'s create shows the run's calls (its create, copy,
// exec and delete) in time order in one trace, with the guest agent's
// records of the copy and the command; --json prints that trace's
// records, one JSON object a line; --last shows the same trace. The
// daemon logs at its default level, as a user's does.
func TestTraceOfACommand(t *testing.T) {
	s, repo := workspaceSandbox(t)
	r := s.banger("vm", "run", "--rm", repo, "--", "sh", "-c", "exit 3").want(t, 3)
	m := createLine.FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("no op id on the create's line:\n%s", r.stderr)
	}
	op := m[1]

	out := s.banger("trace", op).want(t, 0).stdout
	header, _, _ := strings.Cut(out, "\n")
	tm := regexp.MustCompile(`^trace ([0-9a-f]{32}), the command of ` + op + `$`).FindStringSubmatch(header)
	if tm == nil {
		t.Fatalf("no trace id in the header:\n%s", out)
	}
	trace := tm[1]
	at := map[string]int{}
	for i, l := range strings.Split(out, "\n") {
		for _, method := range []string{"vm.create.begin", "vm.copy", "vm.exec", "vm.delete"} {
			if _, seen := at[method]; !seen && strings.Contains(l, "  "+method) {
				at[method] = i
			}
		}
	}
	if len(at) != 4 || !(at["vm.create.begin"] < at["vm.copy"] && at["vm.copy"] < at["vm.exec"] && at["vm.exec"] < at["vm.delete"]) {
		t.Errorf("the create, copy, exec and delete are not rows in time order (%v):\n%s", at, out)
	}
	for _, want := range []string{"untar done", "command ended", "code=3", "banger-agent"} {
		if !strings.Contains(out, want) {
			t.Errorf("the waterfall lacks the agent's %q:\n%s", want, out)
		}
	}

	js := s.banger("trace", "--json", op).want(t, 0).stdout
	methods, ops, agent := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, l := range strings.Split(strings.TrimSuffix(js, "\n"), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("a line that is not one JSON object: %q: %v", l, err)
		}
		if rec["trace_id"] != trace {
			t.Errorf("a record of another trace: %s", l)
		}
		m, _ := rec["method"].(string)
		o, _ := rec["op_id"].(string)
		methods[m], ops[o] = true, true
		if rec["applet"] == "banger-agent" {
			msg, _ := rec["msg"].(string)
			agent[msg] = agent[msg] || msg != "command ended" || rec["code"] == 3.0
		}
	}
	if !methods["vm.create.begin"] || !methods["vm.copy"] || !methods["vm.exec"] || !methods["vm.delete"] || !ops[op] || len(ops) < 4 {
		t.Errorf("the records' methods %v, op ids %v", methods, ops)
	}
	if !agent["untar done"] || !agent["command started"] || !agent["command ended"] {
		t.Errorf("the agent's records of the copy and the command (exit 3) are not all in the trace: %v", agent)
	}

	last := s.banger("trace", "--last").want(t, 0).stdout
	if h, _, _ := strings.Cut(last, "\n"); h != "trace "+trace {
		t.Errorf("--last shows %q, want trace %s", h, trace)
	}
}
