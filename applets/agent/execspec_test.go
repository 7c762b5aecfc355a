package agent

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"banger/internal/session"
)

func TestNewExecSpec(t *testing.T) {
	d := execDefaults{shell: "/bin/ash", dir: "/"}
	for _, c := range []struct {
		name string
		p    session.Exec
		want execSpec
		err  string
	}{
		{name: "argv", p: session.Exec{Argv: []string{"ls", "-l"}},
			want: execSpec{argv: []string{"ls", "-l"}, dir: "/", window: defaultWindow,
				env: []string{"PATH=" + defaultPath, "HOME=/root", "USER=root", "LOGNAME=root", "SHELL=/bin/ash"}}},
		{name: "login shell on a tty", p: session.Exec{Shell: true, TTY: true, Dir: "/srv", Window: &session.WindowSize{Rows: 50, Cols: 200}, Env: []string{"TERM=vt100", "A=b=c"}},
			want: execSpec{argv: []string{"/bin/ash", "-l"}, dir: "/srv", tty: true, window: session.WindowSize{Rows: 50, Cols: 200},
				env: []string{"PATH=" + defaultPath, "HOME=/root", "USER=root", "LOGNAME=root", "SHELL=/bin/ash", "TERM=vt100", "A=b=c"}}},
		{name: "argv wins over shell", p: session.Exec{Argv: []string{"id"}, Shell: true, TTY: true, Window: &session.WindowSize{Rows: 0, Cols: 10}},
			want: execSpec{argv: []string{"id"}, dir: "/", tty: true, window: defaultWindow,
				env: []string{"PATH=" + defaultPath, "HOME=/root", "USER=root", "LOGNAME=root", "SHELL=/bin/ash", "TERM=" + ttyTerm}}},
		{name: "nothing", p: session.Exec{}, err: "no command"},
		{name: "empty argv0", p: session.Exec{Argv: []string{""}}, err: "argv[0] is empty"},
		{name: "NUL", p: session.Exec{Argv: []string{"echo", "a\x00b"}}, err: "argv[1] contains a NUL byte"},
		{name: "relative dir", p: session.Exec{Argv: []string{"ls"}, Dir: "tmp"}, err: `dir "tmp" is not an absolute path`},
		{name: "env without =", p: session.Exec{Argv: []string{"ls"}, Env: []string{"FOO"}}, err: `env entry "FOO" is not KEY=VALUE`},
		{name: "env without key", p: session.Exec{Argv: []string{"ls"}, Env: []string{"=x"}}, err: `env entry "=x" is not KEY=VALUE`},
	} {
		got, err := newExecSpec(c.p, d)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %v, want %q", c.name, err, c.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got.argv, c.want.argv) || !slices.Equal(got.env, c.want.env) ||
			got.dir != c.want.dir || got.tty != c.want.tty || got.window != c.want.window {
			t.Errorf("%s:\n%+v, %v\nwant\n%+v", c.name, got, err, c.want)
		}
	}
}

func TestLoginShell(t *testing.T) {
	dir := t.TempDir()
	passwd := filepath.Join(dir, "passwd")
	for content, want := range map[string]string{
		"daemon:x:1:1::/:/bin/false\nroot:x:0:0:root:/root:/bin/bash\n": "/bin/bash",
		"root:x:0:0:root:/root:/no/such/shell\n":                        fallbackShell,
		"root:x:0:0:root:/root:\n":                                      fallbackShell,
		"root:x:0:0:root:/root:sh\n":                                    fallbackShell,
		"garbage":                                                       fallbackShell,
	} {
		os.WriteFile(passwd, []byte(content), 0o644)
		if got := loginShell(passwd); got != want {
			t.Errorf("%q: shell %q, want %q", content, got, want)
		}
	}
	if got := loginShell(filepath.Join(dir, "none")); got != fallbackShell {
		t.Errorf("no passwd: %q", got)
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	for name, mode := range map[string]os.FileMode{"bin/run": 0o755, "bin/data": 0o644, "other/data": 0o755} {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, nil, mode)
	}
	path := filepath.Join(dir, "bin") + ":" + filepath.Join(dir, "other")
	for _, c := range []struct {
		file, want string
		code       int
	}{
		{"run", filepath.Join(dir, "bin/run"), 0},
		{"data", filepath.Join(dir, "other/data"), 0}, // the first that can run, as a shell does
		{"missing", "", codeNotFound},
		{"./bin/run", "./bin/run", 0}, // relative to the working directory
		{"./bin/data", "", codeCannotRun},
		{"bin", "", codeNotFound},
	} {
		got, err := lookPath(c.file, path, dir)
		code := 0
		if se, ok := err.(*startError); ok {
			code = se.code
		} else if err != nil {
			t.Errorf("%s: %v", c.file, err)
		}
		if code != c.code || code == 0 && got != c.want {
			t.Errorf("lookPath(%q) = %q, code %d (%v); want %q, code %d", c.file, got, code, err, c.want, c.code)
		}
	}
	if _, err := lookPath("data", filepath.Join(dir, "bin"), dir); err == nil || err.(*startError).code != codeCannotRun {
		t.Errorf("data only where it cannot run: %v", err)
	}
}
