package e2e_test

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/applets/helper"
	"banger/rpc"
)

// helperProc is one `bangerd-root --stdio` call in a process of its own,
// as sudo mode makes one per call.
type helperProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout bytes.Buffer
	stderr bytes.Buffer
	done   chan struct{}
}

// holdsOpen says whether process pid has path open.
func holdsOpen(pid int, path string) bool {
	fds, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "fd", "*"))
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && target == path {
			return true
		}
	}
	return false
}

// startHelperProc starts argv (a helper --stdio, maybe under sudo and
// ip netns exec) without its request yet.
func startHelperProc(t *testing.T, argv ...string) *helperProc {
	t.Helper()
	p := &helperProc{cmd: exec.Command(argv[0], argv[1:]...), done: make(chan struct{})}
	p.cmd.Env = cleanEnv()
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *helperProc) send(request string) {
	io.WriteString(p.stdin, request+"\n")
	p.stdin.Close()
}

// answer waits for the call's answer.
func (p *helperProc) answer(t *testing.T, d time.Duration) rpc.Response {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("no answer in %s; stderr: %s", d, p.stderr.String())
	}
	var resp rpc.Response
	if err := json.Unmarshal(p.stdout.Bytes(), &resp); err != nil {
		t.Fatalf("answer is not JSON: %v: %q; stderr: %s", err, p.stdout.String(), p.stderr.String())
	}
	return resp
}

func (p *helperProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// changed reads a network method's "changed".
func changed(t *testing.T, resp rpc.Response) bool {
	t.Helper()
	if !resp.OK {
		t.Fatalf("helper refused: %+v", resp.Error)
	}
	var r struct {
		Changed bool `json:"changed"`
	}
	if err := json.Unmarshal(resp.Result, &r); err != nil {
		t.Fatal(err)
	}
	return r.Changed
}

const (
	ensureBridge = `{"version":1,"method":"priv.ensure_bridge","params":{"name":"banger0","cidr":"10.77.0.0/24"}}`
	ensureNAT    = `{"version":1,"method":"priv.ensure_nat","params":{"bridge":"banger0","cidr":"10.77.0.0/24"}}`
)

// A helper process waits for the lock another holds before it changes
// the host's network, and goes on when it is released; priv.ping, which
// changes nothing, does not wait. The network is a namespace's.
func TestHelperWaitsForTheLockHolder(t *testing.T) {
	s := newSandbox(t)
	ns := newNetns(t)
	lock := filepath.Join(s.dir, "helper.lock")
	f, err := os.OpenFile(lock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	argv := []string{"ip", "netns", "exec", ns.name, bangerBin, "bangerd-root", "--stdio", "--lock-file", lock, "--log-level", "debug"}

	ping := startHelperProc(t, argv...)
	ping.send(`{"version":1,"method":"priv.ping"}`)
	if resp := ping.answer(t, 15*time.Second); !resp.OK {
		t.Errorf("priv.ping while the lock is held: %+v", resp.Error)
	}

	p := startHelperProc(t, argv...)
	p.send(ensureBridge)
	// It waits once it has the lock file open (a fixed sleep would be a
	// race on a loaded machine); then a second more shows it keeps
	// waiting.
	waitFor(t, 15*time.Second, func() bool { return p.exited() || holdsOpen(p.cmd.Process.Pid, lock) })
	time.Sleep(time.Second)
	if p.exited() {
		t.Fatalf("ensure_bridge did not wait for the lock: %s %s", p.stdout.String(), p.stderr.String())
	}
	if got := ns.links(); len(got) != 0 {
		t.Fatalf("links made while the lock was held: %v", got)
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	if !changed(t, p.answer(t, 15*time.Second)) {
		t.Error("ensure_bridge changed nothing")
	}
	if got := ns.links(); len(got) != 1 || got[0] != "banger0" {
		t.Errorf("links: %v", got)
	}
	recs := parseRecords(t, p.stderr.Bytes())
	var msgs []string
	for _, r := range recs {
		msgs = append(msgs, r.Msg)
	}
	// A debug record (--log-level debug), a warning past a second.
	if strings.Join(msgs, "|") != "waited for another helper call|helper rpc completed" || recs[0].OpID != recs[1].OpID || (recs[0].Level != "debug" && recs[0].Level != "warn") {
		t.Errorf("helper records: %+v", recs)
	}
}

// Sudo mode's helpers, one process per call and started at once, take
// turns through the default lock: every call succeeds and exactly one
// makes the change. Without the lock two would both decide to add the
// bridge's address, and one fail with "file exists".
func TestSudoHelpersTakeTurns(t *testing.T) {
	if _, err := exec.LookPath("sudo"); err != nil {
		t.Skip("sudo is not installed (.ci/run installs it)")
	}
	newSandbox(t) // root only
	ns := newNetns(t)
	const n = 12
	for _, request := range []string{ensureBridge, ensureNAT} {
		procs := make([]*helperProc, n)
		for i := range procs {
			procs[i] = startHelperProc(t, "ip", "netns", "exec", ns.name, "sudo", "-n", bangerBin, "bangerd-root", "--stdio")
		}
		time.Sleep(time.Second) // all started: the requests arrive together
		var wg sync.WaitGroup
		for _, p := range procs {
			wg.Add(1)
			go func() { defer wg.Done(); p.send(request) }()
		}
		wg.Wait()
		made := 0
		for _, p := range procs {
			if changed(t, p.answer(t, time.Minute)) {
				made++
			}
		}
		if made != 1 {
			t.Errorf("%s: %d of %d calls changed the host, want exactly 1", request, made, n)
		}
	}
	if fi, err := os.Stat(filepath.Dir(helper.DefaultLockFile)); err != nil || fi.Mode().Perm() != 0o711 {
		t.Errorf("the lock's directory: %v %v", fi, err)
	}
}
