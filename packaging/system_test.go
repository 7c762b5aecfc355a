package packaging

import (
	"banger/internal/layout"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	good := Config{Owner: "alice", UID: 1000, GID: 1000, Prefix: "/usr/local", Helper: HelperService}
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
	}{
		{"root owner", func(c *Config) { c.UID = 0 }},
		{"owner with a space", func(c *Config) { c.Owner = "al ice" }},
		{"owner with a comma", func(c *Config) { c.Owner = "alice,ALL" }},
		{"upper case owner", func(c *Config) { c.Owner = "ALICE" }},
		{"empty owner", func(c *Config) { c.Owner = "" }},
		{"relative prefix", func(c *Config) { c.Prefix = "usr/local" }},
		{"unclean prefix", func(c *Config) { c.Prefix = "/usr/local/" }},
		{"prefix with a space", func(c *Config) { c.Prefix = "/opt/my banger" }},
		{"prefix with dots", func(c *Config) { c.Prefix = "/usr/../tmp" }},
		{"unknown helper", func(c *Config) { c.Helper = "setuid" }},
	} {
		c := good
		tc.edit(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: %+v accepted", tc.name, c)
		}
	}
}

func TestRenderModes(t *testing.T) {
	svc, err := Render(Config{Owner: "alice", UID: 1000, Prefix: "/opt/banger", Helper: HelperService})
	if err != nil {
		t.Fatal(err)
	}
	if len(svc) != 2 {
		t.Fatalf("service mode files: %v", keys(svc))
	}
	root := string(svc[layout.SystemUnitDir+"/"+layout.HelperUnit])
	daemon := string(svc[layout.SystemUnitDir+"/"+layout.DaemonUnit])
	for _, want := range []string{
		"ExecStart=/opt/banger/bin/bangerd-root --socket /run/banger-root/bangerd-root.sock\n",
		"RuntimeDirectory=banger-root\n", "RuntimeDirectoryMode=0711\n",
		"NoNewPrivileges=yes\n", "ProtectSystem=strict\n", "ProtectHome=yes\n", "PrivateTmp=yes\n",
		"CapabilityBoundingSet=CAP_NET_ADMIN CAP_CHOWN\n",
	} {
		if !strings.Contains(root, want) {
			t.Errorf("helper unit lacks %q:\n%s", want, root)
		}
	}
	for _, want := range []string{
		"User=alice\n",
		"ExecStart=/opt/banger/bin/bangerd --socket /run/banger/bangerd.sock --state-dir /var/lib/banger --helper socket --helper-socket /run/banger-root/bangerd-root.sock\n",
		"StateDirectory=banger\n", "RuntimeDirectory=banger\n", "After=bangerd-root.service\n", "NoNewPrivileges=yes\n",
	} {
		if !strings.Contains(daemon, want) {
			t.Errorf("daemon unit (service mode) lacks %q:\n%s", want, daemon)
		}
	}

	sudo, err := Render(Config{Owner: "alice", UID: 1000, Prefix: "/opt/banger", Helper: HelperSudo})
	if err != nil {
		t.Fatal(err)
	}
	if len(sudo) != 2 || sudo[layout.SystemSudoers] == nil || sudo[layout.SystemUnitDir+"/"+layout.HelperUnit] != nil {
		t.Fatalf("sudo mode files: %v", keys(sudo))
	}
	daemon = string(sudo[layout.SystemUnitDir+"/"+layout.DaemonUnit])
	if !strings.Contains(daemon, "--state-dir /var/lib/banger --helper sudo\n") {
		t.Errorf("daemon unit (sudo mode):\n%s", daemon)
	}
	// sudo must be able to gain root from inside the daemon's unit.
	for _, bad := range []string{"NoNewPrivileges=", "ProtectSystem=", "bangerd-root.service"} {
		if strings.Contains(daemon, bad) {
			t.Errorf("daemon unit (sudo mode) has %q:\n%s", bad, daemon)
		}
	}
	rule := "alice ALL=(root) NOPASSWD: /opt/banger/bin/banger bangerd-root --stdio, /opt/banger/bin/bangerd-root --stdio\n"
	if !strings.HasSuffix(string(sudo[layout.SystemSudoers]), rule) {
		t.Errorf("sudoers rule:\n%s", sudo[layout.SystemSudoers])
	}
}

// The rendered sudoers rule passes visudo, and a broken one is not
// written.
func TestSudoersVisudo(t *testing.T) {
	if _, err := exec.LookPath("visudo"); err != nil {
		t.Skip("visudo is not installed (apt-get install sudo)")
	}
	files, err := Render(Config{Owner: "nobody", UID: 65534, Prefix: "/usr/local", Helper: HelperSudo})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "banger")
	if err := writeSudoers(p, files[layout.SystemSudoers], 0); err != nil {
		t.Fatalf("visudo refused the rendered rule: %v", err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o440 {
		t.Fatalf("sudoers file: %v %v", fi, err)
	}
	if out, err := exec.Command("visudo", "-cf", p).CombinedOutput(); err != nil {
		t.Errorf("visudo -cf: %v: %s", err, out)
	}
	bad := filepath.Join(dir, "broken")
	if err := writeSudoers(bad, []byte("nobody ALL=(root NOPASSWD /bin/true\n"), 0); err == nil {
		t.Errorf("a broken rule was accepted")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 1 {
		t.Errorf("files left behind: %v", left)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

// systemd-analyze verify accepts both units in both modes. It checks that
// ExecStart's binary exists and is executable, so the units are rendered
// with a prefix whose bin/ links to this test binary.
func TestUnitsVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	prefix := t.TempDir()
	if err := os.Mkdir(filepath.Join(prefix, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"banger", "bangerd", "bangerd-root"} {
		if err := os.Symlink(self, filepath.Join(prefix, "bin", name)); err != nil {
			t.Fatal(err)
		}
	}
	// daemon (uid 1) is a user every Debian has; systemd-analyze warns
	// about nobody.
	for _, mode := range []string{HelperService, HelperSudo} {
		files, err := Render(Config{Owner: "daemon", UID: 1, Prefix: prefix, Helper: mode})
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		var units []string
		for p, b := range files {
			if !strings.HasSuffix(p, ".service") {
				continue
			}
			u := filepath.Join(dir, filepath.Base(p))
			if err := os.WriteFile(u, b, 0o644); err != nil {
				t.Fatal(err)
			}
			units = append(units, u)
		}
		cmd := exec.Command("systemd-analyze", append([]string{"verify"}, units...)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err = cmd.Run()
		if err != nil || out.Len() != 0 {
			t.Errorf("%s mode: systemd-analyze verify %v: %v\n%s", mode, units, err, out.String())
		}
	}
}

func keys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// The rendered units are confined as far as their work allows:
// systemd-analyze security scores the helper at 2.5 or less and the
// daemon, in both helper modes, at 5.0 or less.
func TestUnitsSecurityExposure(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	limits := map[string]float64{layout.HelperUnit: 2.5, layout.DaemonUnit: 5.0}
	score := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)
	for _, mode := range []string{HelperService, HelperSudo} {
		files, err := Render(Config{Owner: "daemon", UID: 1, Prefix: "/usr/local", Helper: mode})
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		for p, b := range files {
			name := filepath.Base(p)
			limit, ok := limits[name]
			if !ok {
				continue
			}
			unit := filepath.Join(dir, name)
			if err := os.WriteFile(unit, b, 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--no-pager", unit).CombinedOutput()
			m := score.FindSubmatch(out)
			if m == nil {
				t.Fatalf("%s mode, %s: no score (%v):\n%s", mode, name, err, out)
			}
			got, _ := strconv.ParseFloat(string(m[1]), 64)
			t.Logf("%s mode, %s: %.1f", mode, name, got)
			if got > limit {
				t.Errorf("%s mode, %s: exposure %.1f, want at most %.1f", mode, name, got, limit)
			}
		}
	}
}
