package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"banger/internal/session"
)

// The guest's defaults for agent.exec.
const (
	defaultPath   = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	rootHome      = "/root"
	fallbackShell = "/bin/sh"
	passwdFile    = "/etc/passwd"
	ttyTerm       = "xterm-256color"
)

// defaultWindow is the size of a PTY whose session gave none.
var defaultWindow = session.WindowSize{Rows: 24, Cols: 80}

// Exit codes a shell gives a command it could not run.
const (
	codeNotFound  = 127
	codeCannotRun = 126
)

// execSpec is a checked agent.exec: what to start, and how.
type execSpec struct {
	argv   []string // argv[0] is looked up in env's PATH when it has no slash
	env    []string
	dir    string
	tty    bool
	window session.WindowSize
	cred   *syscall.Credential // nil: root's, as the agent runs
}

// execDefaults are what the guest's files decide.
type execDefaults struct {
	shell string // root's login shell
	dir   string // the working directory of a root session that names none
	// passwd and group are the files other users are looked up in.
	passwd, group string
}

func guestExecDefaults() execDefaults {
	return execDefaults{shell: loginShell(passwdFile), dir: homeOrRoot(rootHome), passwd: passwdFile, group: groupFile}
}

// homeOrRoot is home when it is a directory, else / (images without a
// home for root exist: busybox).
func homeOrRoot(home string) string {
	if fi, err := os.Stat(home); err != nil || !fi.IsDir() {
		return "/"
	}
	return home
}

// newExecSpec checks p and completes it with the guest's defaults. A
// command that cannot run is not its business: that is found when it
// starts, and told as a shell tells it.
func newExecSpec(p session.Exec, d execDefaults) (execSpec, error) {
	user, dir := rootUser, d.dir
	user.shell = d.shell
	if !isRoot(p.User) {
		var err error
		if user, err = lookupUser(p.User, d.passwd, d.group); err != nil {
			return execSpec{}, err
		}
		dir = homeOrRoot(user.home)
	}
	spec := execSpec{argv: p.Argv, dir: user.inHome(p.Dir), tty: p.TTY, window: defaultWindow, cred: user.credential()}
	if len(spec.argv) == 0 {
		if !p.Shell {
			return execSpec{}, errors.New("no command: give argv, or shell")
		}
		spec.argv = []string{user.shell, "-l"}
	}
	if spec.argv[0] == "" {
		return execSpec{}, errors.New("argv[0] is empty")
	}
	for i, a := range spec.argv {
		if strings.IndexByte(a, 0) >= 0 {
			return execSpec{}, fmt.Errorf("argv[%d] contains a NUL byte", i)
		}
	}
	switch {
	case spec.dir == "":
		spec.dir = dir
	case !filepath.IsAbs(spec.dir) || strings.IndexByte(spec.dir, 0) >= 0:
		return execSpec{}, fmt.Errorf("dir %q is not an absolute path", spec.dir)
	}
	for _, kv := range p.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" || strings.IndexByte(kv, 0) >= 0 {
			return execSpec{}, fmt.Errorf("env entry %q is not KEY=VALUE", kv)
		}
	}
	if w := p.Window; w != nil && w.Rows > 0 && w.Cols > 0 {
		spec.window = *w
	}
	spec.env = execEnv(user, p.TTY, p.Env)
	return spec, nil
}

// execEnv is the base environment of a command of user, with extra's
// entries replacing or adding to it.
func execEnv(user guestUser, tty bool, extra []string) []string {
	env := []string{"PATH=" + defaultPath, "HOME=" + user.home, "USER=" + user.name, "LOGNAME=" + user.name, "SHELL=" + user.shell}
	if tty {
		env = append(env, "TERM="+ttyTerm)
	}
	at := map[string]int{}
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		at[k] = i
	}
	for _, kv := range extra {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := at[k]; ok {
			env[i] = kv
			continue
		}
		at[k] = len(env)
		env = append(env, kv)
	}
	return env
}

// envValue is key's value in env.
func envValue(env []string, key string) string {
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v
		}
	}
	return ""
}

// loginShell is root's shell in passwd, if it can run, else /bin/sh.
func loginShell(passwd string) string {
	shell := fallbackShell
	eachLine(passwd, func(f []string) bool {
		if len(f) != 7 || f[0] != "root" {
			return false
		}
		if sh := f[6]; filepath.IsAbs(sh) && checkExecutable(sh) == nil {
			shell = sh
		}
		return true
	})
	return shell
}

// startError is a command that could not start, with the code and the
// message a shell would give.
type startError struct {
	code int
	msg  string
}

func (e *startError) Error() string { return e.msg }

// lookPath finds file as a shell does: a name with a slash is a path
// (relative to dir, the command's working directory), any other is
// looked for in path, the command's PATH.
func lookPath(file, path, dir string) (string, error) {
	if strings.Contains(file, "/") {
		return file, checkExecutable(inDir(dir, file))
	}
	var denied error
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, file)
		if !filepath.IsAbs(p) {
			p = "./" + p
		}
		err := checkExecutable(inDir(dir, p))
		if err == nil {
			return p, nil
		}
		var se *startError
		if denied == nil && errors.As(err, &se) && se.code == codeCannotRun {
			denied = err
		}
	}
	if denied != nil {
		return "", denied
	}
	return "", &startError{code: codeNotFound, msg: file + ": command not found"}
}

func inDir(dir, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// checkExecutable says whether p is a file that exec may run.
func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &startError{code: codeNotFound, msg: p + ": no such file or directory"}
	case err != nil:
		return &startError{code: codeCannotRun, msg: p + ": " + errnoText(err)}
	case fi.IsDir():
		return &startError{code: codeCannotRun, msg: p + ": is a directory"}
	case fi.Mode()&0o111 == 0:
		return &startError{code: codeCannotRun, msg: p + ": permission denied"}
	}
	return nil
}

// checkDir checks the working directory before a start, whose own error
// would not say which path it was about.
func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case err != nil:
		return &startError{code: codeCannotRun, msg: "working directory " + dir + ": " + errnoText(err)}
	case !fi.IsDir():
		return &startError{code: codeCannotRun, msg: "working directory " + dir + ": not a directory"}
	}
	return nil
}

// startFailure is a start that failed after the checks passed: the
// file is no program (exec format error), its interpreter is missing.
func startFailure(path string, err error) error {
	return &startError{code: codeCannotRun, msg: path + ": " + errnoText(err)}
}

// errnoText is err's system error alone ("permission denied"), without
// the operation and path that the caller says better.
func errnoText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}
