package e2e_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"banger/internal/api"
)

// Sandboxes on real guests: vm run, exec, shell, the workspace copy and
// ports, driven through the banger binary as a user would.

// bangerIn runs the client with stdin and returns its output and exit
// code.
func (s *sandbox) bangerIn(stdin []byte, args ...string) result {
	s.t.Helper()
	return s.runIn(stdin, 2*time.Minute, bangerBin, args...)
}

// assertNothingLeft checks that no VM, instance directory or engine
// process is left.
func (s *sandbox) assertNothingLeft() {
	s.t.Helper()
	var vms []api.VM
	s.banger("vm", "list", "--json").want(s.t, 0).json(s.t, &vms)
	if len(vms) != 0 || len(s.vmDirs()) != 0 || len(s.enginePIDs()) != 0 {
		s.t.Errorf("left behind: vms %+v, dirs %v, engines %v", vms, s.vmDirs(), s.enginePIDs())
	}
}

func TestVMRunExitStatusAndStreams(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	r := s.banger("vm", "run", "--rm", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
	if r.code != 7 || r.stdout != "out\n" || !strings.Contains(r.stderr, "err\n") {
		t.Fatalf("vm run: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// banger's own lines are on stderr, before the command's.
	if !strings.Contains(r.stderr, "vm.create") {
		t.Errorf("no stages on stderr: %q", r.stderr)
	}
	s.assertNothingLeft()

	// Refusals that cost no VM.
	s.banger("vm", "run", "-d", "--rm").want(t, 2)
	s.banger("vm", "run", "-d", "--", "true").want(t, 2)
	s.banger("vm", "run", "--rm", "/no/such/dir", "--", "true").want(t, 2)
	s.assertNothingLeft()
}

func TestVMExecShellAndPTY(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	r := s.banger("vm", "run", "-d", "--name", "box").want(t, 0)
	if strings.TrimSpace(r.stdout) != "box" {
		t.Fatalf("vm run -d printed %q", r.stdout)
	}

	// A 10 MiB binary stream through cat, both ways, byte-exact.
	blob := make([]byte, 10<<20)
	rand.Read(blob)
	r = s.bangerIn(blob, "vm", "exec", "box", "--", "cat")
	if r.code != 0 || !bytes.Equal([]byte(r.stdout), blob) {
		t.Errorf("cat of 10 MiB: exit %d, %d bytes back, equal %v; stderr %q", r.code, len(r.stdout), bytes.Equal([]byte(r.stdout), blob), r.stderr)
	}

	if r := s.bangerIn([]byte("not for cat"), "vm", "exec", "--no-stdin", "box", "--", "cat"); r.code != 0 || r.stdout != "" {
		t.Errorf("--no-stdin: exit %d, stdout %q", r.code, r.stdout)
	}
	s.banger("vm", "exec", "box", "--", "sh", "-c", "kill -9 $$").want(t, 137)
	if r := s.banger("vm", "exec", "box", "--", "no-such-command"); r.code != 127 || !strings.Contains(r.stderr, "no-such-command") {
		t.Errorf("command not found: exit %d, stderr %q", r.code, r.stderr)
	}
	r = s.banger("vm", "exec", "--env", "A=b c", "--workdir", "/tmp", "box", "--", "sh", "-c", `echo "$A"; pwd`).want(t, 0)
	if r.stdout != "b c\n/tmp\n" {
		t.Errorf("env and workdir: %q", r.stdout)
	}
	r = s.bangerIn([]byte("echo hi from $0\nexit 3\n"), "vm", "shell", "box")
	if r.code != 3 || !strings.Contains(r.stdout, "hi from") {
		t.Errorf("shell without a terminal: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	// Eight sessions at once, each with its own status.
	var wg sync.WaitGroup
	for i := 1; i <= 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := s.banger("vm", "exec", "box", "--", "sh", "-c", fmt.Sprintf("echo %d; exit %d", i, i))
			if r.code != i || r.stdout != fmt.Sprintf("%d\n", i) {
				t.Errorf("session %d: exit %d, stdout %q, stderr %q", i, r.code, r.stdout, r.stderr)
			}
		}()
	}
	wg.Wait()

	// Ctrl-C reaches a command that does not read its input, even with
	// megabytes of input queued behind it.
	cmd := exec.Command(bangerBin, "vm", "exec", "box", "--", "sleep", "1000")
	cmd.Env = s.env
	cmd.Stdin = bytes.NewReader(make([]byte, 8<<20))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, func() bool {
		return s.banger("vm", "exec", "box", "--", "sh", "-c", "ps | grep -q '[s]leep 1000'").code == 0
	})
	cmd.Process.Signal(syscall.SIGINT)
	if err := waitExit(cmd, 30*time.Second); err != 130 {
		t.Errorf("exec of sleep after Ctrl-C: exit %d, want 130", err)
	}
	if s.banger("vm", "exec", "box", "--", "sh", "-c", "ps | grep -q '[s]leep 1000'").code == 0 {
		t.Errorf("sleep still runs in the guest")
	}

	// A reader that stops (| head) ends the command, not banger.
	sh := exec.Command("sh", "-c", bangerBin+" vm exec box -- yes | head -c 3")
	sh.Env = s.env
	if out, err := sh.Output(); err != nil || string(out) != "y\ny" {
		t.Errorf("yes | head: %q, %v", out, err)
	}

	// Bad calls.
	s.banger("vm", "exec", "box").want(t, 2)
	s.banger("vm", "exec", "ghost", "--", "true").want(t, 4)
	s.banger("vm", "create", "--name", "cold", "--no-start").want(t, 0)
	s.banger("vm", "exec", "cold", "--", "true").want(t, 5)

	t.Run("pty", func(t *testing.T) { testShellOnPTY(t, s, "box") })
}

// waitExit waits, at most d, for cmd and returns its exit code (-1 if it
// did not end, and it is killed).
func waitExit(cmd *exec.Cmd, d time.Duration) int {
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
		return cmd.ProcessState.ExitCode()
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		return -1
	}
}

// testShellOnPTY drives `banger vm shell` on a pseudo-terminal: tty, a
// resize, exit, and the terminal's modes restored afterwards.
func testShellOnPTY(t *testing.T, s *sandbox, vm string) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	pty.Setsize(ptmx, &pty.Winsize{Rows: 24, Cols: 80})
	before, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bangerBin, "vm", "shell", vm)
	cmd.Env = append(s.env, "TERM=xterm")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer cmd.Process.Kill()

	out := &lockedBuffer{}
	go io.Copy(out, ptmx)
	expect := func(what string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(out.String(), what) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q on the terminal; got:\n%s", what, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	ptmx.WriteString("echo TTY=$(tty)\n")
	expect("TTY=/dev/pts/")
	pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 100})
	time.Sleep(300 * time.Millisecond)
	ptmx.WriteString("echo SIZE=$(stty size)\n")
	expect("SIZE=40 100")
	ptmx.WriteString("exit 4\n")
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 4 {
			t.Errorf("shell exit: %v, want status 4", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the shell did not end; terminal:\n%s", out.String())
	}
	after, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if before.Lflag != after.Lflag || before.Iflag != after.Iflag || before.Oflag != after.Oflag {
		t.Errorf("terminal modes not restored: before %+v, after %+v", before, after)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// gitRepo makes a work tree with a tracked, an ignored and an untracked
// file.
func gitRepo(t *testing.T, dir string) string {
	repo := filepath.Join(dir, "myrepo")
	files := map[string]string{
		"tracked.txt":     "tracked\n",
		"sub/deep.txt":    "deep\n",
		"run.sh":          "#!/bin/sh\necho script ran\n",
		".gitignore":      "ignored.txt\n",
		"ignored.txt":     "ignored\n",
		"untracked.txt":   "untracked\n",
		"sub/ignored.txt": "ignored too\n",
	}
	for name, data := range files {
		p := filepath.Join(repo, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
	}
	gitCommit(t, repo, "tracked.txt", "sub/deep.txt", "run.sh", ".gitignore")
	return repo
}

// gitCommit makes repo a git repository whose one commit tracks paths.
func gitCommit(t *testing.T, repo string, paths ...string) {
	t.Helper()
	for _, args := range [][]string{
		{"init", "-q"},
		append([]string{"add"}, paths...),
		{"-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init"},
	} {
		cmd := exec.Command("git", append([]string{"-C", repo}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
}

// workspaceSandbox is a sandbox with a daemon and a git repository to
// copy into VMs.
func workspaceSandbox(t *testing.T) (*sandbox, string) {
	t.Helper()
	needGuests(t)
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed (packaging/test.sh installs it)")
	}
	s := newSandbox(t)
	s.daemon()
	return s, gitRepo(t, s.dir)
}

func TestVMRunWorkspace(t *testing.T) {
	s, repo := workspaceSandbox(t)

	// From a subdirectory: the whole repo is copied, the command starts
	// in the same subdirectory of the copy.
	r := s.banger("vm", "run", "--rm", filepath.Join(repo, "sub"), "--", "sh", "-c",
		"pwd; cat deep.txt ../tracked.txt; ../run.sh; for f in ../ignored.txt ../untracked.txt ignored.txt; do test -e $f && echo LEAKED $f; done; true")
	want := "/root/myrepo/sub\ndeep\ntracked\nscript ran\n"
	if r.code != 0 || r.stdout != want {
		t.Errorf("workspace: exit %d, stdout %q (want %q), stderr %q", r.code, r.stdout, want, r.stderr)
	}
	if !strings.Contains(r.stderr, "copied 4 files") {
		t.Errorf("no copy summary on stderr: %q", r.stderr)
	}

	r = s.banger("vm", "run", "--rm", "--include-untracked", repo, "--", "sh", "-c", "cat untracked.txt; test -e ignored.txt && echo LEAKED; true")
	if r.code != 0 || r.stdout != "untracked\n" {
		t.Errorf("--include-untracked: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	s.assertNothingLeft()
}

func TestVMRunRmAfterSIGINT(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	cmd := exec.Command(bangerBin, "vm", "run", "--rm", "--name", "doomed", "--", "sleep", "1000")
	cmd.Env = s.env
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Interrupt once the command runs in the guest.
	waitFor(t, 2*time.Minute, func() bool {
		r := s.banger("vm", "exec", "doomed", "--", "sh", "-c", "pgrep -x sleep || ps | grep -q '[s]leep 1000'")
		return r.code == 0
	})
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 130 {
			t.Errorf("after SIGINT: %v, want exit 130; stderr %s", err, errb.String())
		}
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatalf("vm run did not end after SIGINT; stderr %s", errb.String())
	}
	s.assertNothingLeft()
}

// freePort is a TCP port nobody listens on at the moment.
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func httpGet(url string) (string, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestVMPublishedPorts(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	hostPort := freePort(t)
	s.banger("vm", "run", "-d", "--name", "web", "--publish", fmt.Sprintf("%d:8080", hostPort)).want(t, 0)
	s.banger("vm", "exec", "web", "--", "sh", "-c", "mkdir -p /srv && echo hello from the guest > /srv/index.html && httpd -p 8080 -h /srv").want(t, 0)

	var ports api.VMPorts
	waitFor(t, 30*time.Second, func() bool {
		s.banger("vm", "ports", "--json", "web").want(t, 0).json(t, &ports)
		for _, p := range ports.Listening {
			if p.Port == 8080 {
				return true
			}
		}
		return false
	})
	if len(ports.Published) != 1 || ports.Published[0].HostPort != hostPort {
		t.Errorf("published: %+v", ports.Published)
	}
	body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/index.html", hostPort))
	if err != nil || body != "hello from the guest\n" {
		t.Errorf("GET through the published port: %q, %v", body, err)
	}

	// Added and removed while the VM runs.
	second := freePort(t)
	s.banger("vm", "port", "add", "web", fmt.Sprintf("%d:8080", second)).want(t, 0)
	if body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/index.html", second)); err != nil || body != "hello from the guest\n" {
		t.Errorf("GET through the added port: %q, %v", body, err)
	}
	s.banger("vm", "port", "remove", "web", fmt.Sprintf("%d:8080", second)).want(t, 0)
	if _, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/index.html", second)); err == nil {
		t.Errorf("the removed port still answers")
	}

	// A host port in use is refused, at create and at add.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	if r := s.banger("vm", "port", "add", "web", fmt.Sprintf("%d:80", taken)); r.code != 5 || !strings.Contains(r.stderr, fmt.Sprint(taken)) {
		t.Errorf("add of a taken port: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := s.banger("vm", "create", "--name", "web2", "--publish", fmt.Sprintf("%d:80", taken)); r.code != 5 {
		t.Errorf("create with a taken port: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := s.banger("vm", "create", "--name", "web3", "--publish", fmt.Sprintf("%d:80", hostPort)); r.code != 5 {
		t.Errorf("create with another VM's port: exit %d, stderr %q", r.code, r.stderr)
	}
}
