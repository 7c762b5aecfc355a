package agentlink_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/applets/agent/boot"
	"banger/internal/agentlink"
	"banger/internal/session"
)

// The session tests run commands in the guest, so their image is the
// test image with a static busybox and its applets, built once beside it.

const hostBusybox = "/bin/busybox"

var (
	bbOnce  sync.Once
	bbGuest *guestFiles
	bbErr   error
	bbSkip  bool
)

func needBusyboxGuest(t *testing.T) *guestFiles {
	t.Helper()
	g := needGuest(t)
	bbOnce.Do(func() { bbGuest, bbSkip, bbErr = buildBusyboxGuest(g) })
	if bbSkip {
		t.Skip(bbErr)
	}
	if bbErr != nil {
		t.Fatal(bbErr)
	}
	return bbGuest
}

func buildBusyboxGuest(g *guestFiles) (*guestFiles, bool, error) {
	if static, err := isStatic(hostBusybox); err != nil || !static {
		return nil, true, fmt.Errorf("no static busybox at %s (Debian: busybox-static): %v", hostBusybox, err)
	}
	out, err := exec.Command(hostBusybox, "--list-full").Output()
	if err != nil {
		return nil, false, fmt.Errorf("busybox --list-full: %v", err)
	}
	root := filepath.Join(g.Dir, "bbroot")
	// No /root: commands then start in /, as in banger's default image.
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, false, err
		}
	}
	for src, dst := range map[string]string{g.Banger: boot.AgentPath, hostBusybox: "/bin/busybox"} {
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, false, err
		}
		if err := os.WriteFile(filepath.Join(root, dst), data, 0o755); err != nil {
			return nil, false, err
		}
	}
	for _, applet := range append(strings.Fields(string(out)), "bin/sh") {
		p := filepath.Join(root, applet)
		if _, err := os.Lstat(p); err == nil {
			continue // the agent's path, or a duplicate
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.Symlink("/bin/busybox", p); err != nil {
			return nil, false, err
		}
	}
	os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	base := filepath.Join(g.Dir, "busybox.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-d", root, "-L", "bangerroot", base, "64M").CombinedOutput(); err != nil {
		return nil, false, fmt.Errorf("mkfs.ext4: %v: %s", err, out)
	}
	bb := *g
	bb.Base = base
	return &bb, false, nil
}

func isStatic(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	return !slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP }), nil
}

// sessionWait bounds one session: a hang fails the test instead of
// stalling it.
const sessionWait = 2 * time.Minute

// result is how a session in the guest went.
type result struct {
	session.ExitStatus
	stdout, stderr string
}

// guestExec runs one exec session on link.
func guestExec(link *agentlink.Link, p session.Exec, stdio session.Stdio) (result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := link.OpenSession(ctx, agentlink.MethodExec, p)
	if err != nil {
		return result{}, err
	}
	watchdog := time.AfterFunc(sessionWait, func() { s.Close() })
	defer watchdog.Stop()
	var stdout, stderr bytes.Buffer
	if stdio.Stdout == nil {
		stdio.Stdout = &stdout
	}
	stdio.Stderr = &stderr
	st, err := session.Run(s, stdio)
	return result{st, stdout.String(), stderr.String()}, err
}

func mustExec(t *testing.T, link *agentlink.Link, p session.Exec, stdio session.Stdio) result {
	t.Helper()
	r, err := guestExec(link, p, stdio)
	if err != nil {
		t.Fatalf("exec %q: %v", p.Argv, err)
	}
	return r
}

func sh(script string) session.Exec { return session.Exec{Argv: []string{"sh", "-c", script}} }

func bootBusybox(t *testing.T, hostname string) *agentlink.Link {
	t.Helper()
	g := needBusyboxGuest(t)
	v := launch(t, g, hostname)
	v.dumpConsoleOnFailure(t)
	return waitReady(t, v)
}

func TestSessionExec(t *testing.T) {
	link := bootBusybox(t, "box-exec")

	t.Run("streams and code", func(t *testing.T) {
		r := mustExec(t, link, sh("echo out; echo err >&2; exit 7"), session.Stdio{})
		if r.ExitStatus != (session.ExitStatus{Code: 7}) || r.stdout != "out\n" || r.stderr != "err\n" {
			t.Errorf("got %+v", r)
		}
	})
	t.Run("defaults", func(t *testing.T) {
		r := mustExec(t, link, sh(`echo "$(pwd)|$HOME|$USER|$SHELL|${TERM-unset}|$PATH"`), session.Stdio{})
		want := "/|/root|root|/bin/sh|unset|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
		if r.Code != 0 || r.stdout != want {
			t.Errorf("got %+v, want stdout %q", r, want)
		}
	})
	t.Run("10 MiB through cat", func(t *testing.T) {
		data := make([]byte, 10<<20)
		rand.Read(data)
		start := time.Now()
		r := mustExec(t, link, session.Exec{Argv: []string{"cat"}}, session.Stdio{Stdin: bytes.NewReader(data)})
		if r.Code != 0 || r.stdout != string(data) {
			t.Errorf("status %+v, %d bytes back of %d", r.ExitStatus, len(r.stdout), len(data))
		}
		t.Logf("10 MiB there and back in %s", time.Since(start).Round(time.Millisecond))
	})
	t.Run("killed by a signal", func(t *testing.T) {
		if r := mustExec(t, link, sh("kill -9 $$"), session.Stdio{}); r.ExitStatus != (session.ExitStatus{Code: 137, Signal: 9}) {
			t.Errorf("got %+v", r)
		}
		sig := make(chan int, 1)
		sig <- 15
		if r := mustExec(t, link, session.Exec{Argv: []string{"sleep", "100"}}, session.Stdio{Signal: sig}); r.ExitStatus != (session.ExitStatus{Code: 143, Signal: 15}) {
			t.Errorf("signal frame: got %+v", r)
		}
	})
	t.Run("not found", func(t *testing.T) {
		r := mustExec(t, link, session.Exec{Argv: []string{"no-such-command"}}, session.Stdio{})
		if r.Code != 127 || r.Error != "no-such-command: command not found" {
			t.Errorf("got %+v", r)
		}
		r = mustExec(t, link, session.Exec{Argv: []string{"ls"}, Dir: "/no/such/dir"}, session.Stdio{})
		if r.Code != 126 || !strings.Contains(r.Error, "/no/such/dir") {
			t.Errorf("bad dir: got %+v", r)
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				r, err := guestExec(link, sh(fmt.Sprintf("echo session %d; sleep 0.2; exit %d", i, 20+i)), session.Stdio{})
				if err != nil || r.Code != 20+i || r.stdout != fmt.Sprintf("session %d\n", i) {
					t.Errorf("session %d: %+v, %v", i, r, err)
				}
			})
		}
		wg.Wait()
	})
	t.Run("background process keeps the output open", func(t *testing.T) {
		start := time.Now()
		r := mustExec(t, link, sh("sleep 30 & echo started"), session.Stdio{})
		if d := time.Since(start); r.Code != 0 || r.stdout != "started\n" || d > 10*time.Second {
			t.Errorf("got %+v after %s", r, d)
		}
	})
	t.Run("host leaves", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := link.OpenSession(ctx, agentlink.MethodExec, sh("echo started; exec sleep 1000"))
		if err != nil {
			t.Fatal(err)
		}
		started := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			_, err := session.Run(s, session.Stdio{Stdout: &signalWriter{first: started}})
			done <- err
		}()
		select {
		case <-started:
		case <-time.After(sessionWait):
			t.Fatal("sleep did not start")
		}
		if r := mustExec(t, link, session.Exec{Argv: []string{"pidof", "sleep"}}, session.Stdio{}); r.Code != 0 {
			t.Fatalf("pidof finds no sleep while the session runs: %+v", r)
		}
		s.Close()
		if err := <-done; !errors.Is(err, session.ErrNoExit) {
			t.Errorf("the closed session ended with %v", err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			// The sleep of "background process" above is one too.
			r := mustExec(t, link, sh("ps -o args | grep -c '^sleep 1000'"), session.Stdio{})
			if strings.TrimSpace(r.stdout) == "0" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sleep 1000 lives on without its host: %+v", r)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	// The agent serves on after all that.
	if _, err := link.Ping(context.Background()); err != nil {
		t.Error(err)
	}
}

// signalWriter closes first at its first write.
type signalWriter struct {
	first chan struct{}
	once  sync.Once
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.first) })
	return len(p), nil
}

func TestSessionTTY(t *testing.T) {
	link := bootBusybox(t, "box-tty")
	r := mustExec(t, link, session.Exec{Argv: []string{"sh", "-c", "tty; stty size; echo $TERM"}, TTY: true, Window: &session.WindowSize{Rows: 33, Cols: 111}}, session.Stdio{})
	if r.Code != 0 || !regexp.MustCompile(`^/dev/pts/\d+\r\n33 111\r\nxterm-256color\r\n$`).MatchString(r.stdout) {
		t.Errorf("got %+v", r)
	}

	resize := make(chan session.WindowSize)
	in, typist := io.Pipe()
	go func() {
		resize <- session.WindowSize{Rows: 44, Cols: 155}
		// The resize frame was taken to be sent; the line follows it.
		time.Sleep(200 * time.Millisecond)
		typist.Write([]byte("\n"))
		typist.Close()
	}()
	r = mustExec(t, link, session.Exec{Argv: []string{"sh", "-c", "read x; stty size"}, TTY: true}, session.Stdio{Stdin: in, Resize: resize})
	if r.Code != 0 || !strings.Contains(r.stdout, "44 155\r\n") {
		t.Errorf("after a resize: %+v", r)
	}

	// The login shell reads its commands from the terminal, typed once
	// it prompts: input that comes earlier meets the terminal in another
	// mode than the shell's line editor sets.
	prompted := make(chan struct{})
	var out bytes.Buffer
	stdin := io.MultiReader(waitReader{prompted}, strings.NewReader("echo in-$0; exit 3\n"))
	r = mustExec(t, link, session.Exec{Shell: true, TTY: true}, session.Stdio{Stdin: stdin, Stdout: io.MultiWriter(&out, &signalWriter{first: prompted})})
	if r.Code != 3 || !strings.Contains(out.String(), "in-/bin/sh") {
		t.Errorf("login shell: %+v, output %q", r, out.String())
	}
}

// waitReader reads as empty once ready is closed.
type waitReader struct{ ready <-chan struct{} }

func (r waitReader) Read([]byte) (int, error) {
	<-r.ready
	return 0, io.EOF
}

func TestSessionUntar(t *testing.T) {
	link := bootBusybox(t, "box-untar")
	mtime := time.Date(2022, 2, 22, 22, 22, 22, 0, time.UTC)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range []struct {
		hdr  tar.Header
		body string
	}{
		{tar.Header{Typeflag: tar.TypeDir, Name: "proj/", Mode: 0o750}, ""},
		{tar.Header{Typeflag: tar.TypeReg, Name: "proj/hello.txt", Mode: 0o640}, "hi there\n"},
		{tar.Header{Typeflag: tar.TypeReg, Name: "proj/bin/run.sh", Mode: 0o755}, "#!/bin/sh\necho ran in $(pwd)\n"},
		{tar.Header{Typeflag: tar.TypeSymlink, Name: "proj/link", Linkname: "hello.txt"}, ""},
		{tar.Header{Typeflag: tar.TypeLink, Name: "proj/hard", Linkname: "proj/hello.txt"}, ""},
	} {
		e.hdr.Size, e.hdr.ModTime = int64(len(e.body)), mtime
		tw.WriteHeader(&e.hdr)
		tw.Write([]byte(e.body))
	}
	tw.Close()

	untar := func(dir string, data []byte) session.ExitStatus {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := link.OpenSession(ctx, agentlink.MethodUntar, session.Untar{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		st, err := session.Run(s, session.Stdio{Stdin: bytes.NewReader(data)})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := untar("/tmp/ws/deep", buf.Bytes()); st != (session.ExitStatus{}) {
		t.Fatalf("untar: %+v", st)
	}
	r := mustExec(t, link, session.Exec{Argv: []string{"sh", "-c", "cat link; stat -c '%n %a %Y %h %u' hello.txt bin/run.sh hard . ; ls -l link; ./bin/run.sh"}, Dir: "/tmp/ws/deep/proj"}, session.Stdio{})
	want := regexp.MustCompile(fmt.Sprintf(`^hi there
hello.txt 640 %[1]d 2 0
bin/run.sh 755 %[1]d 1 0
hard 640 %[1]d 2 0
. 750 %[1]d \d+ 0
l[rwx]{9} .* link -> hello.txt
ran in /tmp/ws/deep/proj
$`, mtime.Unix()))
	if r.Code != 0 || !want.MatchString(r.stdout) {
		t.Errorf("the unpacked tree: %+v", r)
	}

	var evil bytes.Buffer
	tw = tar.NewWriter(&evil)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "etc", Linkname: "/etc", ModTime: mtime})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/evil", Mode: 0o644, Size: 4, ModTime: mtime})
	tw.Write([]byte("evil"))
	tw.Close()
	if st := untar("/tmp/ws2", evil.Bytes()); st.Code != 1 || !strings.Contains(st.Error, "a symlink is in the way") {
		t.Errorf("untar through a symlink: %+v", st)
	}
	if r := mustExec(t, link, session.Exec{Argv: []string{"test", "-e", "/etc/evil"}}, session.Stdio{}); r.Code != 1 {
		t.Errorf("/etc/evil was written: %+v", r)
	}
}

func TestSessionPorts(t *testing.T) {
	link := bootBusybox(t, "box-ports")
	ctx, cancel := context.WithTimeout(context.Background(), sessionWait)
	defer cancel()
	before, err := link.Ports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(before, func(p agentlink.Port) bool { return p.Port == 8080 }) {
		t.Fatalf("8080 is taken before the test: %+v", before)
	}
	// httpd goes to the background by itself, with its output closed.
	if r := mustExec(t, link, session.Exec{Argv: []string{"httpd", "-p", "8080", "-h", "/"}}, session.Stdio{}); r.Code != 0 {
		t.Fatalf("httpd: %+v", r)
	}
	for {
		ports, err := link.Ports(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(ports, func(p agentlink.Port) bool { return p.Port == 8080 && strings.HasPrefix(p.Proto, "tcp") }) {
			t.Logf("ports: %+v", ports)
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("8080 never listened: %+v", ports)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
