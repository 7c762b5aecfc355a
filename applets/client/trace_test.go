package client

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runMain runs the client on args and returns its exit code, stdout and
// stderr.
func runMain(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb}, append([]string{"banger"}, args...))
	return code, out.String(), errb.String()
}

const testdataLog = "../../internal/trace/testdata/bangerd.log"

// Each command remembers its trace for trace --last, at once, in the
// user's state directory, mode 0600; trace, help and version do not.
func TestTraceLast(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	base := []string{"--state-dir", state, "--socket", filepath.Join(dir, "none.sock"), "--no-autostart"}
	if code, _, stderr := runMain(t, append(base, "trace", "--last")...); code != ExitNotFound || !strings.Contains(stderr, "no command has been run from here yet") {
		t.Fatalf("--last before any command: exit %d, %s", code, stderr)
	}

	const id = "4bf92f3577b34da6a3ce929d0e0e4736"
	t.Setenv("TRACEPARENT", "00-"+id+"-00f067aa0ba902b7-01")
	if code, _, stderr := runMain(t, append(base, "ping")...); code != ExitUnreachable {
		t.Fatalf("ping with no daemon: exit %d, %s", code, stderr)
	}
	path := filepath.Join(state, "last-trace")
	b, err := os.ReadFile(path)
	if err != nil || string(b) != id+"\n" {
		t.Fatalf("last-trace %q, %v", b, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("last-trace mode %v", fi.Mode())
	}

	// Neither trace itself, nor help, nor version changes it.
	t.Setenv("TRACEPARENT", "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	for _, a := range [][]string{{"trace", "--last"}, {"vm", "--help"}, {"help"}, {"version"}, {"trace", "--log", testdataLog, "op-01M8TMXWDBCCP12GR6Y9MPZ7PT"}} {
		runMain(t, append(base, a...)...)
		if b, _ := os.ReadFile(path); string(b) != id+"\n" {
			t.Errorf("%v rewrote last-trace: %q", a, b)
		}
	}
	// --last traces the remembered id (no log holds it here).
	if code, _, stderr := runMain(t, append(base, "trace", "--last")...); code != ExitNotFound || !strings.Contains(stderr, "no records of "+id) {
		t.Errorf("--last: exit %d, %s", code, stderr)
	}
	if code, _, _ := runMain(t, append(base, "trace", "--last", "op-01M8TMXWDBCCP12GR6Y9MPZ7PT")...); code != ExitUsage {
		t.Errorf("--last with an id: exit %d, want %d", code, ExitUsage)
	}
	if matches, _ := filepath.Glob(filepath.Join(state, ".last-trace*")); len(matches) != 0 {
		t.Errorf("temporary files left: %v", matches)
	}
}

// A state directory that cannot be written fails no command.
func TestTraceLastUnwritable(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	code, _, stderr := runMain(t, "--state-dir", filepath.Join(file, "state"), "--socket", filepath.Join(dir, "none.sock"), "--no-autostart", "ping")
	if code != ExitUnreachable {
		t.Errorf("ping: exit %d, %s", code, stderr)
	}
}

// trace takes an op id or a trace id, and shows the whole trace of either.
func TestTraceIDs(t *testing.T) {
	base := []string{"--state-dir", t.TempDir(), "trace", "--log", testdataLog}
	for _, id := range []string{"op-01M8TMXWDBCCP12GR6Y9MPZ7PT", "01a2354ed95265bf6c01b5469f5a0896"} {
		code, stdout, stderr := runMain(t, append(base, id)...)
		if code != ExitOK || !strings.HasPrefix(stdout, "trace 01a2354ed95265bf6c01b5469f5a0896") || !strings.Contains(stdout, "vm.delete") {
			t.Errorf("%s: exit %d, %s%s", id, code, stdout, stderr)
		}
	}
	for _, bad := range [][]string{{"op-x"}, {"4BF92F3577B34DA6A3CE929D0E0E4736"}, {}, {"a", "b"}} {
		if code, _, _ := runMain(t, append(base, bad...)...); code != ExitUsage {
			t.Errorf("%q: exit %d, want %d", bad, code, ExitUsage)
		}
	}
}
