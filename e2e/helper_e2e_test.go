package e2e_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"banger/internal/api"
	"banger/internal/privapi"
	"banger/rpc"
)

// logRecord is the part of a JSON log record the tests read.
type logRecord struct {
	Applet string   `json:"applet"`
	Level  string   `json:"level"`
	Msg    string   `json:"msg"`
	OpID   string   `json:"op_id"`
	Trace  string   `json:"trace_id"`
	Method string   `json:"method"`
	Stage  string   `json:"stage"`
	Code   any      `json:"code"` // an error's code, or a guest command's exit status
	UID    *int     `json:"uid"`
	PID    *int     `json:"pid"`
	Dur    *float64 `json:"duration_ms"`
	Time   string   `json:"time"`
}

func readRecords(t *testing.T, path string) []logRecord {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parseRecords(t, b)
}

func parseRecords(t *testing.T, b []byte) []logRecord {
	t.Helper()
	var recs []logRecord
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r logRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("log line is not JSON: %v\n%s", err, sc.Text())
		}
		recs = append(recs, r)
	}
	return recs
}

func withOp(recs []logRecord, opID string) []logRecord {
	var out []logRecord
	for _, r := range recs {
		if r.OpID == opID {
			out = append(out, r)
		}
	}
	return out
}

// startHelper runs bangerd-root on a socket as root, logging to a file.
func (s *sandbox) startHelper(ownerUID string) (socket, log string) {
	s.t.Helper()
	socket = filepath.Join(s.dir, "helper.sock")
	log = filepath.Join(s.dir, "helper.log")
	s.startProcess(0, &bytes.Buffer{}, bangerBin, "bangerd-root", "--socket", socket, "--owner-uid", ownerUID, "--log-file", log)
	waitSocket(s.t, socket)
	return socket, log
}

func TestHostCheckThroughHelperSocket(t *testing.T) {
	s := newSandbox(t)
	hsock, hlog := s.startHelper("0")
	assertMode(t, hsock, 0o600)
	s.env = append(s.env, "BANGER_HELPER_SOCKET="+hsock)

	var res api.HostCheckResult
	s.banger("host", "check", "--json").want(t, 0).json(t, &res)
	if res.HelperMode != "socket" || res.HelperPath != hsock || res.Helper.EUID != 0 || res.Helper.Version == "" {
		t.Errorf("host check: %+v", res)
	}
	if !strings.Contains(strings.Join(res.Helper.Capabilities, ","), "cap_net_admin") {
		t.Errorf("root helper reports no cap_net_admin: %v", res.Helper.Capabilities)
	}

	// The daemon's stage record and the helper's call record share the op id.
	var stage *logRecord
	for _, r := range readRecords(t, s.daemonLog()) {
		if r.Method == api.MethodHostCheck && r.Stage == "call helper" {
			stage = &r
		}
	}
	if stage == nil || !rpc.ValidOpID(stage.OpID) || stage.Dur == nil {
		t.Fatalf("no host.check stage record with op id and duration in the daemon log")
	}
	hrecs := withOp(readRecords(t, hlog), stage.OpID)
	if len(hrecs) != 1 {
		t.Fatalf("helper log has %d records of %s, want exactly 1", len(hrecs), stage.OpID)
	}
	h := hrecs[0]
	if h.Msg != "helper rpc completed" || h.Method != privapi.MethodPing || h.Applet != "bangerd-root" || h.Dur == nil || h.UID == nil || *h.UID != 0 || h.PID == nil {
		t.Errorf("helper record: %+v", h)
	}

	var v struct {
		Client struct{ Version string }
		Daemon *struct{ Version string }
		Helper string
	}
	s.banger("version", "--json").want(t, 0).json(t, &v)
	if v.Client.Version == "" || v.Daemon == nil || v.Helper == "" {
		t.Errorf("version: %+v", v)
	}
}

// One failing command's op id is in its stderr, in the daemon's log and in
// the helper's log, and `banger trace` lays those records out together.
// The daemon runs as an unprivileged owner the helper does not accept; the
// helper's socket mode is loosened so the refusal comes from its peer
// check (SO_PEERCRED), not from file permissions.
func TestFailingCommandOpIDAcrossDaemonAndHelper(t *testing.T) {
	s := newSandbox(t)
	hsock, hlog := s.startHelper("12345")
	os.Chmod(hsock, 0o666)
	for _, d := range []string{s.runtime, s.state} {
		os.Chown(d, nobody, nobody)
	}
	var dstderr bytes.Buffer
	s.startProcess(nobody, &dstderr, bangerBin, "bangerd", "--helper-socket", hsock)
	waitSocket(t, s.socket())

	r := s.bangerAs(nobody, "host", "check").want(t, 6) // as the daemon's owner
	m := opIDAtEnd.FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("stderr does not end with an op id: %q", r.stderr)
	}
	op := m[1]
	if !strings.Contains(r.stderr, "unauthorized") {
		t.Errorf("stderr: %q", r.stderr)
	}

	drecs := withOp(readRecords(t, s.daemonLog()), op)
	if len(drecs) == 0 {
		t.Fatalf("daemon log has no record of %s", op)
	}
	for _, rec := range drecs {
		if rec.Applet != "bangerd" || rec.Method != api.MethodHostCheck {
			t.Errorf("daemon record: %+v", rec)
		}
	}
	hrecs := withOp(readRecords(t, hlog), op)
	if len(hrecs) != 1 || hrecs[0].Msg != "helper rpc failed" || hrecs[0].Code != "unauthorized" || *hrecs[0].UID != nobody {
		t.Fatalf("helper records of %s: %+v", op, hrecs)
	}

	tr := s.banger("trace", "--log", hlog, op).want(t, 0)
	for _, want := range []string{op, "bangerd-root", "helper rpc failed", "code=unauthorized", "[call helper]", "host.check", "priv.ping"} {
		if !strings.Contains(tr.stdout, want) {
			t.Errorf("trace lacks %q:\n%s", want, tr.stdout)
		}
	}
	tj := s.banger("trace", "--json", "--log", hlog, op).want(t, 0)
	recs := parseRecords(t, []byte(tj.stdout))
	if len(recs) != len(drecs)+len(hrecs) {
		t.Errorf("trace --json: %d records, want %d", len(recs), len(drecs)+len(hrecs))
	}
	for i, rec := range recs {
		if rec.OpID != op {
			t.Errorf("trace --json record of another op: %+v", rec)
		}
		if i > 0 && rec.Time < recs[i-1].Time {
			t.Errorf("trace --json out of time order at %d", i)
		}
	}
	s.banger("trace", "--log", hlog, "op-01ARZ3NDEKTSV4RRFFQ69G5FAV").want(t, 4)
	if r := s.banger("trace", op, "--log", hlog).want(t, 2); !strings.Contains(r.stderr, "put flags first") {
		t.Errorf("flag after the op id: %q", r.stderr)
	}
}

// helperStdio runs `banger bangerd-root --stdio` with one request, as uid.
func helperStdio(t *testing.T, uid int, request string, extra ...string) (rpc.Response, []logRecord) {
	t.Helper()
	cmd := exec.Command(bangerBin, append([]string{"bangerd-root", "--stdio"}, extra...)...)
	cmd.Env = cleanEnv()
	cmd.Stdin = strings.NewReader(request)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	if err := cmd.Run(); err != nil {
		t.Fatalf("helper --stdio: %v\n%s", err, errb.String())
	}
	var resp rpc.Response
	if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
		t.Fatalf("helper answer is not JSON: %v: %q", err, out.String())
	}
	return resp, parseRecords(t, errb.Bytes())
}

func TestHelperStdioAdoptsOpIDsAndRefuses(t *testing.T) {
	newSandbox(t) // root only
	op := rpc.NewOpID()
	resp, recs := helperStdio(t, 0, `{"version":1,"method":"priv.ping","op_id":"`+op+`"}`)
	if !resp.OK || len(recs) != 1 || recs[0].OpID != op || recs[0].Msg != "helper rpc completed" {
		t.Errorf("well-formed op id not adopted: %+v %+v", resp, recs)
	}

	resp, recs = helperStdio(t, 0, `{"version":1,"method":"priv.ping","op_id":"op-../../etc/passwd"}`)
	if !resp.OK || len(recs) != 1 || !rpc.ValidOpID(recs[0].OpID) {
		t.Errorf("malformed op id: %+v %+v", resp, recs)
	}

	resp, recs = helperStdio(t, 0, `{"version":1,"method":"priv.rm_rf","op_id":"`+op+`"}`)
	if resp.OK || resp.Error.Code != rpc.CodeUnknownMethod || resp.Error.OpID != op || recs[0].Msg != "helper rpc failed" {
		t.Errorf("unknown method: %+v %+v", resp.Error, recs)
	}

	// Not root and not the owner: refused, with the op id, and logged.
	resp, recs = helperStdio(t, nobody, `{"version":1,"method":"priv.ping","op_id":"`+op+`"}`, "--owner-uid", "12345")
	if resp.OK || resp.Error.Code != rpc.CodeUnauthorized || resp.Error.OpID != op {
		t.Errorf("stranger: %+v", resp.Error)
	}
	if len(recs) != 1 || recs[0].Code != rpc.CodeUnauthorized || *recs[0].UID != nobody {
		t.Errorf("stranger's record: %+v", recs)
	}
	// The owner is accepted.
	resp, _ = helperStdio(t, nobody, `{"version":1,"method":"priv.ping"}`, "--owner-uid", "65534")
	if !resp.OK {
		t.Errorf("owner refused: %+v", resp.Error)
	}
}

func TestHelperFlags(t *testing.T) {
	s := newSandbox(t)
	s.run(bangerBin, "bangerd-root").want(t, 2)
	s.run(bangerBin, "bangerd-root", "--stdio", "--socket", "/x").want(t, 2)
}

// With no helper socket, the daemon reaches the helper through
// `sudo -n <this binary> bangerd-root --stdio` and keeps its records.
func TestHostCheckThroughSudo(t *testing.T) {
	if _, err := exec.LookPath("sudo"); err != nil {
		t.Skip("sudo is not installed (.ci/run installs it)")
	}
	if _, err := os.Stat("/run/banger-root/bangerd-root.sock"); err == nil {
		t.Skip("a system helper socket exists; auto mode would use it")
	}
	s := newSandbox(t)
	var res api.HostCheckResult
	s.banger("host", "check", "--json").want(t, 0).json(t, &res)
	if res.HelperMode != "sudo" || !strings.Contains(res.HelperPath, "sudo -n /") || res.Helper.EUID != 0 {
		t.Errorf("host check through sudo: %+v", res)
	}
	hlog := filepath.Join(s.state, "banger", "bangerd-root.log")
	recs := readRecords(t, hlog)
	if len(recs) != 1 || recs[0].Msg != "helper rpc completed" || !rpc.ValidOpID(recs[0].OpID) {
		t.Fatalf("helper log: %+v", recs)
	}
	if len(withOp(readRecords(t, s.daemonLog()), recs[0].OpID)) == 0 {
		t.Errorf("helper's op id %s not in the daemon log", recs[0].OpID)
	}
}
