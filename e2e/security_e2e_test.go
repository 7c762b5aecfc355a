package e2e_test

import (
	"bytes"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
)

// Boundaries held against another local user.

// envFakeDaemon makes this test binary a fake daemon (TestMain): "DIR
// RECORD" serves DIR/bangerd.sock and DIR/bangerd-stream.sock, open to
// everyone, appends what any client sends to RECORD, and answers with a
// forged success. It is another user's attempt to stand in for yours.
const envFakeDaemon = "BANGER_TEST_FAKE_DAEMON"

func fakeDaemon(spec string) int {
	dir, record, _ := strings.Cut(spec, " ")
	os.MkdirAll(dir, 0o777)
	os.Chmod(dir, 0o777)
	rec, err := os.OpenFile(record, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o666)
	if err != nil {
		return 1
	}
	for _, name := range []string{"bangerd.sock", "bangerd-stream.sock"} {
		path := filepath.Join(dir, name)
		os.Remove(path)
		ln, err := net.Listen("unix", path)
		if err != nil {
			return 1
		}
		os.Chmod(path, 0o777)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(5 * time.Second))
					b := make([]byte, 64<<10)
					n, _ := c.Read(b)
					rec.Write(b[:n])
					c.Write([]byte("{\"ok\":true,\"result\":{\"op_id\":\"op-01JT2M4Q8W3R6ZK5N7YB2C9D0E\"}}\n\x01\x00\x00\x00\x0a\x1b[2Jforged!\n\x05\x00\x00\x00\x04\x00\x00\x00\x00"))
				}()
			}
		}()
	}
	select {}
}

// A local user who makes your daemon's directory first (no
// XDG_RUNTIME_DIR: cron, su, ssh without a login session) gets nothing
// from your client, which refuses with exit 6; nor does a socket you name
// that another user serves.
func TestClientRefusesAnotherUsersDaemon(t *testing.T) {
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	s := newSandbox(t) // root, for setpriv and the copy of this binary
	shared := filepath.Join(s.dir, "tmp")
	os.Mkdir(shared, 0o777)
	os.Chmod(shared, 0o1777) // as /tmp
	const victim, attacker = "65533", "65534"
	fake := filepath.Join(shared, "fake")
	copyFile(t, os.Args[0], fake, 0o755)
	record := filepath.Join(shared, "record")
	evil := filepath.Join(shared, "banger-"+victim)
	named := filepath.Join(shared, "named")
	for _, dir := range []string{evil, named} {
		attack := exec.Command("setpriv", "--reuid="+attacker, "--regid="+attacker, "--clear-groups", fake)
		attack.Env = []string{envFakeDaemon + "=" + dir + " " + record}
		if err := attack.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { attack.Process.Kill(); attack.Wait() })
		waitFor(t, 10*time.Second, func() bool { _, err := os.Stat(filepath.Join(dir, "bangerd-stream.sock")); return err == nil })
	}

	asVictim := func(args ...string) result {
		cmd := exec.Command("setpriv", append([]string{"--reuid=" + victim, "--regid=" + victim, "--clear-groups", bangerBin}, args...)...)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "TMPDIR=" + shared, "HOME=/nonexistent"}
		var out, errb bytes.Buffer
		cmd.Stdin = strings.NewReader("secret input\n")
		cmd.Stdout, cmd.Stderr = &out, &errb
		cmd.Run()
		return result{out.String(), errb.String(), cmd.ProcessState.ExitCode()}
	}
	// The default place, made first by the attacker.
	for _, args := range [][]string{
		{"vm", "exec", "--env", "API_TOKEN=secret", "box", "--", "cat"},
		{"vm", "list"},
		{"ping"},
	} {
		r := asVictim(args...)
		if r.code != 6 || !strings.Contains(r.stderr, "unauthorized") || !strings.Contains(r.stderr, "owned by uid "+attacker) || strings.Contains(r.stdout, "forged") {
			t.Errorf("%v in a directory the attacker made: exit %d\nstdout %q\nstderr %s", args, r.code, r.stdout, r.stderr)
		}
	}
	// A socket named outright, that the attacker serves.
	r := asVictim("--socket", filepath.Join(named, "bangerd.sock"), "vm", "exec", "--env", "API_TOKEN=secret", "box", "--", "cat")
	if r.code != 6 || !strings.Contains(r.stderr, "run by uid "+attacker) || strings.Contains(r.stdout, "forged") {
		t.Errorf("--socket the attacker serves: exit %d\nstdout %q\nstderr %s", r.code, r.stdout, r.stderr)
	}
	if b, _ := os.ReadFile(record); len(b) != 0 {
		t.Errorf("the attacker received %q", b)
	}
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	out.Close()
}

// What a guest writes to its console reaches no terminal raw: vm logs
// drops control characters (--raw keeps them, for a file), and a guest's
// panic in a VM's last error has none either.
func TestGuestTextIsMadePrintable(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	s.banger("vm", "create", "--name", "box").want(t, 0)
	s.banger("vm", "exec", "box", "--", "sh", "-c", `printf '\033]0;owned\007\033[2J\033[31mred alert\033[0m\n' > /dev/console`).want(t, 0)
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(s.banger("vm", "logs", "box").stdout, "red alert") })
	r := s.banger("vm", "logs", "box").want(t, 0)
	if strings.ContainsAny(r.stdout, "\x1b\x07\r") {
		t.Errorf("control characters in vm logs: %q", r.stdout[max(0, len(r.stdout)-300):])
	}
	if raw := s.banger("vm", "logs", "--raw", "box").want(t, 0); !strings.Contains(raw.stdout, "\x1b[31mred alert") {
		t.Errorf("vm logs --raw lost the console's bytes")
	}
	// A panic whose line the guest dressed up.
	s.banger("vm", "exec", "box", "--", "sh", "-c", `printf 'Kernel panic - \033[2Jforged\n' > /dev/console; kill -ABRT 1`)
	waitFor(t, 10*time.Second, func() bool {
		var vm api.VM
		s.banger("vm", "show", "--json", "box").want(t, 0).json(t, &vm)
		return vm.State == "failed"
	})
	for _, args := range [][]string{{"vm", "show", "box"}, {"vm", "show", "--json", "box"}, {"vm", "list"}} {
		if r := s.banger(args...).want(t, 0); strings.ContainsAny(r.stdout, "\x1b\x07") || strings.Contains(r.stdout, `\u001b`) {
			t.Errorf("%v: %q", args, r.stdout)
		}
	}
	s.banger("vm", "delete", "box").want(t, 0)
}

// A guest that floods its console keeps it under the daemon's bound,
// and the other VMs keep working; vm logs still shows the console's end.
func TestConsoleFloodStaysBounded(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.env = append(s.env, "BANGER_CONSOLE_MAX_SIZE=1") // MiB
	s.daemon()
	s.banger("vm", "create", "--name", "flood").want(t, 0)
	s.banger("vm", "create", "--name", "calm").want(t, 0)
	var vm api.VM
	s.banger("vm", "show", "--json", "flood").want(t, 0).json(t, &vm)
	console := filepath.Join(vm.InstanceDir, "console.log")
	done := make(chan result, 1)
	go func() {
		done <- s.runIn(nil, 2*time.Minute, bangerBin, "vm", "exec", "flood", "--", "sh", "-c",
			`dd if=/dev/zero bs=1k count=6144 2>/dev/null | tr '\0' x > /dev/console; echo the-end > /dev/console`)
	}()
	var most int64
	for waiting := true; waiting; {
		select {
		case r := <-done:
			if r.code != 0 {
				t.Errorf("the flood: exit %d: %s", r.code, r.stderr)
			}
			waiting = false
		case <-time.After(50 * time.Millisecond):
		}
		var st syscall.Stat_t
		if syscall.Stat(console, &st) == nil {
			most = max(most, st.Blocks*512)
		}
	}
	s.banger("vm", "exec", "calm", "--", "true").want(t, 0)
	t.Logf("the console held at most %d KiB", most>>10)
	if most > 1<<20 {
		t.Errorf("the console grew to %d KiB, past its 1 MiB", most>>10)
	}
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(s.banger("vm", "logs", "flood").stdout, "the-end") })
	s.banger("vm", "delete", "flood").want(t, 0)
	s.banger("vm", "delete", "calm").want(t, 0)
}
