package packaging_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/BurntSushi/toml"

	"banger/packaging"
)

// bangerBin is the real binary, built once by TestMain into a directory
// everyone may read (tests run it as nobody too).
var bangerBin string

const nobody = 65534

func TestMain(m *testing.M) {
	// The binary is run as other users too, whatever the caller's umask.
	syscall.Umask(0o022)
	dir, err := os.MkdirTemp("", "banger-packaging-")
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err == nil {
		bangerBin = filepath.Join(dir, "banger")
		cmd := exec.Command("go", "build", "-tags", "urfave_cli_no_docs", "-o", bangerBin, ".")
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, berr := cmd.CombinedOutput(); berr != nil {
			err = fmt.Errorf("go build: %v\n%s", berr, out)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

// banger runs the binary as uid (0: as we are).
func banger(t *testing.T, uid int, args ...string) result {
	t.Helper()
	cmd := exec.Command(bangerBin, args...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/nonexistent"}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run banger %v: %v", args, err)
	}
	return result{code: cmd.ProcessState.ExitCode(), stdout: out.String(), stderr: errb.String()}
}

func (r result) want(t *testing.T, code int) result {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
	return r
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (install chowns the state directory to the owner)")
	}
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

func gone(t *testing.T, root string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(filepath.Join(root, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there (%v)", p, err)
		}
	}
}

func status(t *testing.T, root string, code int) packaging.Status {
	t.Helper()
	var st packaging.Status
	r := banger(t, 0, "system", "status", "--json", "--root", root).want(t, code)
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	return st
}

// install (sudo mode), status, install again in service mode, uninstall,
// uninstall --purge: files, modes, links and what stays.
func TestSystemInstallStatusUninstall(t *testing.T) {
	needRoot(t)
	root := t.TempDir()
	r := banger(t, 0, "system", "install", "--root", root, "--owner", "nobody", "--helper", "sudo").want(t, 0)
	if !strings.Contains(r.stdout, "systemd is not running: units written, not started") {
		t.Errorf("install output:\n%s", r.stdout)
	}

	bin := filepath.Join(root, "usr/local/bin")
	if m := mode(t, filepath.Join(bin, "banger")); !m.IsRegular() || m.Perm() != 0o755 {
		t.Errorf("binary mode %v", m)
	}
	for _, name := range []string{"bangerd", "bangerd-root", "banger-agent"} {
		if target, err := os.Readlink(filepath.Join(bin, name)); err != nil || target != "banger" {
			t.Errorf("link %s: %q %v", name, target, err)
		}
	}
	var cfg packaging.Config
	if _, err := toml.DecodeFile(filepath.Join(root, "etc/banger/install.toml"), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg != (packaging.Config{Owner: "nobody", UID: nobody, GID: cfg.GID, Prefix: "/usr/local", Helper: "sudo"}) {
		t.Errorf("install.toml: %+v", cfg)
	}
	if m := mode(t, filepath.Join(root, "etc/banger/install.toml")); m.Perm() != 0o644 {
		t.Errorf("install.toml mode %v", m)
	}
	sudoers := filepath.Join(root, "etc/sudoers.d/banger")
	if m := mode(t, sudoers); m.Perm() != 0o440 {
		t.Errorf("sudoers mode %v", m)
	}
	if out, err := exec.Command("visudo", "-cf", sudoers).CombinedOutput(); err != nil {
		t.Errorf("visudo -cf: %v: %s", err, out)
	}
	unit, err := os.ReadFile(filepath.Join(root, "etc/systemd/system/bangerd.service"))
	if err != nil || !strings.Contains(string(unit), "User=nobody\n") || !strings.Contains(string(unit), "--helper sudo\n") {
		t.Errorf("bangerd.service: %v\n%s", err, unit)
	}
	gone(t, root, "etc/systemd/system/bangerd-root.service")
	state := filepath.Join(root, "var/lib/banger")
	fi, err := os.Stat(state)
	if err != nil || fi.Mode().Perm() != 0o700 || fi.Sys().(*syscall.Stat_t).Uid != nobody {
		t.Errorf("state directory: %v %v", fi.Mode(), err)
	}

	st := status(t, root, 0)
	if !st.Installed || st.Systemd || st.Config == nil || st.Config.Helper != "sudo" || st.Packaged {
		t.Errorf("status: %+v", st)
	}
	for _, f := range st.Files {
		want := f.Path != "/etc/systemd/system/bangerd-root.service"
		if f.Exists != want {
			t.Errorf("status of %s: %+v", f.Path, f)
		}
	}
	if len(st.Links) != 3 || !packaging.LinksOK(st.Links) {
		t.Errorf("status links: %+v", st.Links)
	}

	// Again, in service mode: the helper's unit comes, the sudoers rule goes.
	r = banger(t, 0, "system", "install", "--root", root, "--owner", "nobody", "--helper", "service").want(t, 0)
	if !strings.Contains(r.stdout, "removed /etc/sudoers.d/banger") {
		t.Errorf("reinstall output:\n%s", r.stdout)
	}
	gone(t, root, "etc/sudoers.d/banger")
	if unit, err := os.ReadFile(filepath.Join(root, "etc/systemd/system/bangerd-root.service")); err != nil ||
		!strings.Contains(string(unit), "ExecStart=/usr/local/bin/bangerd-root --socket /run/banger-root/bangerd-root.sock\n") {
		t.Errorf("bangerd-root.service: %v\n%s", err, unit)
	}

	// Uninstall keeps the configuration and the state.
	banger(t, 0, "system", "uninstall", "--root", root).want(t, 0)
	gone(t, root, "usr/local/bin/banger", "usr/local/bin/bangerd", "usr/local/bin/bangerd-root", "usr/local/bin/banger-agent",
		"etc/systemd/system/bangerd.service", "etc/systemd/system/bangerd-root.service")
	for _, p := range []string{"etc/banger/install.toml", "var/lib/banger"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("uninstall without --purge removed %s", p)
		}
	}
	if st := status(t, root, 4); st.Installed {
		t.Errorf("status after uninstall: %+v", st)
	}

	r = banger(t, 0, "system", "uninstall", "--purge", "--json", "--root", root).want(t, 0)
	var rep packaging.UninstallReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.Removed, " ") != "/etc/banger /var/lib/banger" {
		t.Errorf("uninstall --purge removed %v", rep.Removed)
	}
	gone(t, root, "etc/banger", "var/lib/banger")
	if st := status(t, root, 4); st.Installed || st.Config != nil {
		t.Errorf("status after purge: %+v", st)
	}
}

func TestSystemInstallRefuses(t *testing.T) {
	root := t.TempDir()
	if os.Geteuid() == 0 {
		// The same command as nobody: refused before anything is written.
		r := banger(t, nobody, "system", "install", "--root", root, "--owner", "nobody").want(t, 6)
		if !strings.Contains(r.stderr, "must run as root") {
			t.Errorf("non-root install: %q", r.stderr)
		}
		banger(t, nobody, "system", "uninstall", "--root", root).want(t, 6)
	} else {
		banger(t, 0, "system", "install", "--root", root, "--owner", "nobody").want(t, 6)
		t.Skip("the rest needs root")
	}
	for _, args := range [][]string{
		{"--owner", "no-such-user-banger"},
		{"--owner", "root"},
		{"--owner", "nobody", "--helper", "setuid"},
		{"--owner", "nobody", "--prefix", "relative/path"},
		{"--owner", "nobody", "extra-argument"},
		{}, // --owner is required
	} {
		r := banger(t, 0, append([]string{"system", "install", "--root", root}, args...)...)
		if r.code != 2 {
			t.Errorf("install %v: exit %d, want 2\n%s", args, r.code, r.stderr)
		}
	}
	if left, _ := os.ReadDir(root); len(left) != 0 {
		t.Errorf("a refused install wrote %v", left)
	}
	// A prefix that its owner, or anyone but root, can write: whoever
	// can replace the binary root runs would become root.
	mine := filepath.Join(root, "home", "mine")
	shared := filepath.Join(root, "srv", "shared")
	os.MkdirAll(mine, 0o755)
	os.Chown(mine, nobody, nobody)
	os.MkdirAll(shared, 0o755)
	os.Chmod(shared, 0o777)
	for prefix, want := range map[string]string{"/home/mine": "owned by uid 65534", "/srv/shared": "writable by others"} {
		r := banger(t, 0, "system", "install", "--root", root, "--owner", "nobody", "--prefix", prefix).want(t, 6)
		if !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "only root can write") {
			t.Errorf("prefix %s: %s", prefix, r.stderr)
		}
	}
	if left, _ := os.ReadDir(root); len(left) != 2 {
		t.Errorf("a refused install wrote %v", left)
	}
}

// The sudo path of a system install, end to end with Debian's sudo: the
// installed rule lets the owner run the helper as root without a password,
// and nothing else. The real /etc and /usr/local/bin are not touched: in
// a private mount namespace, a copy of /etc with the install's files and
// the install's bin directory are mounted over them.
func TestSystemSudoPath(t *testing.T) {
	needRoot(t)
	for _, tool := range []string{"sudo", "unshare", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	if err := exec.Command("unshare", "-m", "true").Run(); err != nil {
		t.Skipf("cannot make a mount namespace here: %v", err)
	}
	root := t.TempDir()
	etc := installSudoEtc(t, root)
	ping := `{"version":1,"method":"priv.ping"}`
	asOwner := "setpriv --reuid 65534 --regid 65534 --clear-groups "
	script := fmt.Sprintf(`set -u
mount --bind %s /etc && mount --bind %s /usr/local/bin || exit 100
echo '%s' | %s sudo -n /usr/local/bin/banger bangerd-root --stdio 2>/dev/null; echo "@rc=$?"
echo '%s' | %s sudo -n /usr/local/bin/bangerd-root --stdio 2>/dev/null; echo "@rc=$?"
%s sudo -n /usr/local/bin/banger bangerd-root --socket /tmp/x.sock 2>&1; echo "@rc=$?"
%s sudo -n /bin/true 2>&1; echo "@rc=$?"
`, etc, filepath.Join(root, "usr/local/bin"), ping, asOwner, ping, asOwner, asOwner, asOwner)
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "LC_ALL=C") // sudo's refusal is read in English
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("namespace script: %v\n%s", err, out)
	}
	// Four answers, each followed by @rc=STATUS.
	parts := strings.Split(string(out), "@rc=")
	if len(parts) != 5 {
		t.Fatalf("output:\n%s", out)
	}
	for i, p := range parts[:4] {
		rc := strings.TrimSpace(strings.SplitN(parts[i+1], "\n", 2)[0])
		answer := strings.TrimSpace(p)
		if i > 0 {
			answer = strings.TrimSpace(strings.SplitN(p, "\n", 2)[1])
		}
		if i >= 2 {
			if !strings.Contains(answer, "a password is required") || rc == "0" {
				t.Errorf("sudo allowed more than the helper's --stdio: %q (exit %s)", answer, rc)
			}
			continue
		}
		var resp struct {
			OK     bool `json:"ok"`
			Result struct {
				EUID int `json:"euid"`
			} `json:"result"`
		}
		if err := json.Unmarshal([]byte(answer), &resp); err != nil || rc != "0" || !resp.OK || resp.Result.EUID != 0 {
			t.Errorf("the owner through sudo: %q, exit %s (%v)", answer, rc, err)
		}
	}
}

// The .deb: the binary, its links, the units and the sudoers example, and
// a postinst that only reloads systemd.
func TestDeb(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and nfpm (-short skips it)")
	}
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb is not installed")
	}
	out := t.TempDir()
	cmd := exec.Command("./deb.sh", out)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("deb.sh: %v\n%s", err, stderr.String())
	}
	deb := strings.TrimSpace(string(stdout))
	if filepath.Dir(deb) != out || !strings.HasSuffix(deb, "_amd64.deb") {
		t.Fatalf("deb.sh made %q", deb)
	}
	list, err := exec.Command("dpkg-deb", "-c", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	var entries []string
	for _, l := range strings.Split(strings.TrimSpace(string(list)), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || strings.HasSuffix(f[5], "/") {
			continue
		}
		e := f[0][:1] + " " + strings.Join(f[5:], " ")
		entries = append(entries, e)
	}
	want := []string{
		"- ./lib/systemd/system/bangerd-root.service",
		"- ./lib/systemd/system/bangerd@.service",
		"- ./usr/bin/banger",
		"l ./usr/bin/banger-agent -> banger",
		"l ./usr/bin/bangerd -> banger",
		"l ./usr/bin/bangerd-root -> banger",
		"- ./usr/share/doc/banger/sudoers.example",
	}
	if strings.Join(entries, "\n") != strings.Join(want, "\n") {
		t.Errorf("dpkg-deb -c:\n%s\nwant:\n%s", strings.Join(entries, "\n"), strings.Join(want, "\n"))
	}

	x := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-R", deb, x).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -R: %v: %s", err, out)
	}
	postinst, err := os.ReadFile(filepath.Join(x, "DEBIAN/postinst"))
	script, _ := os.ReadFile("deb-postinst.sh")
	if err != nil || !bytes.Equal(postinst, script) {
		t.Errorf("postinst: %v\n%s", err, postinst)
	}
	if v, err := exec.Command(filepath.Join(x, "usr/bin/banger"), "version", "--json").Output(); err != nil || !strings.Contains(string(v), `"client"`) {
		t.Errorf("the packaged binary: %v %s", err, v)
	}
	unit, _ := os.ReadFile(filepath.Join(x, "lib/systemd/system/bangerd@.service"))
	if !strings.Contains(string(unit), "User=%i\n") || !strings.Contains(string(unit), "ExecStart=/usr/bin/bangerd ") {
		t.Errorf("bangerd@.service:\n%s", unit)
	}
	if _, err := exec.LookPath("visudo"); err == nil {
		if out, err := exec.Command("visudo", "-cf", filepath.Join(x, "usr/share/doc/banger/sudoers.example")).CombinedOutput(); err != nil {
			t.Errorf("visudo -cf sudoers.example: %v: %s", err, out)
		}
	}
}

// installSudoEtc runs a sudo-mode system install for nobody under root
// and returns a copy of the host's /etc with the install's files in it,
// for a mount namespace to put over /etc.
func installSudoEtc(t *testing.T, root string) string {
	t.Helper()
	banger(t, 0, "system", "install", "--root", root, "--owner", "nobody", "--helper", "sudo").want(t, 0)
	etc := filepath.Join(root, "etc-ns")
	for _, cp := range [][]string{
		{"/etc", etc},
		{filepath.Join(root, "etc/banger"), etc + "/"},
		{filepath.Join(root, "etc/sudoers.d/banger"), etc + "/sudoers.d/"},
	} {
		if out, err := exec.Command("cp", "-a", cp[0], cp[1]).CombinedOutput(); err != nil {
			t.Fatalf("cp %v: %v: %s", cp, err, out)
		}
	}
	return etc
}
