package packaging_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The sudo mode as it runs after `banger system install --helper sudo`:
// the daemon, as the owner (nobody), reaches the helper through Debian's
// sudo and the installed rule, for priv.ping (host check) and for a
// network change (network reset), and keeps the helper's records. As in
// TestSystemSudoPath, a private mount namespace puts the install's /etc
// and bin directory in place; a private network namespace takes the
// reset, so the host's links and nftables are never touched.
func TestDaemonReachesTheHelperThroughSudo(t *testing.T) {
	needRoot(t)
	for _, tool := range []string{"sudo", "unshare", "setpriv", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	if err := exec.Command("unshare", "-m", "-n", "true").Run(); err != nil {
		t.Skipf("cannot make mount and network namespaces here: %v", err)
	}
	// Under /tmp, not t.TempDir(): the owner must pass through to its
	// directories, and t.TempDir's parent is root's alone.
	root, err := os.MkdirTemp("", "banger-sudo-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	os.Chmod(root, 0o755)
	etc := installSudoEtc(t, root)
	// The owner's own directories, as the system install's units give it.
	home := filepath.Join(root, "owner")
	for _, d := range []string{home, filepath.Join(home, "run"), filepath.Join(home, "state")} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(home, "run", "bangerd.sock")
	state := filepath.Join(home, "state")
	asOwner := fmt.Sprintf("setpriv --reuid %d --regid %d --clear-groups env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=%s BANGER_SOCKET=%s BANGER_NO_AUTOSTART=1 ", nobody, nobody, home, sock)
	script := fmt.Sprintf(`set -u
mount --bind %[1]s /etc && mount --bind %[2]s /usr/local/bin || exit 100
ip link set lo up
%[3]s /usr/local/bin/bangerd --helper sudo --socket %[4]s --state-dir %[5]s 2>%[6]s &
daemon=$!
i=0; while [ ! -S %[4]s ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done
%[3]s /usr/local/bin/banger host check --json 2>&1; echo "@rc=$?"
%[3]s /usr/local/bin/banger network reset --json 2>&1; echo "@rc=$?"
kill $daemon; wait $daemon
`, etc, filepath.Join(root, "usr/local/bin"), asOwner, sock, state, filepath.Join(home, "bangerd.stderr"))
	out, err := exec.Command("unshare", "-m", "-n", "--propagation", "private", "sh", "-c", script).CombinedOutput()
	t.Cleanup(func() {
		if t.Failed() {
			derr, _ := os.ReadFile(filepath.Join(home, "bangerd.stderr"))
			t.Logf("the daemon's stderr:\n%s", derr)
		}
	})
	if err != nil {
		t.Fatalf("namespace script: %v\n%s", err, out)
	}
	parts := strings.Split(string(out), "@rc=")
	if len(parts) != 3 {
		t.Fatalf("output:\n%s", out)
	}
	answer := func(i int) (string, string) {
		a := parts[i]
		if i > 0 {
			_, a, _ = strings.Cut(a, "\n")
		}
		rc, _, _ := strings.Cut(parts[i+1], "\n")
		return strings.TrimSpace(a), strings.TrimSpace(rc)
	}

	var hc struct {
		HelperMode string `json:"helper_mode"`
		HelperPath string `json:"helper_path"`
		Helper     struct {
			EUID int `json:"euid"`
		} `json:"helper"`
	}
	a, rc := answer(0)
	if err := json.Unmarshal([]byte(a), &hc); err != nil || rc != "0" || hc.HelperMode != "sudo" || hc.Helper.EUID != 0 ||
		hc.HelperPath != "sudo -n /usr/local/bin/banger bangerd-root --stdio" {
		t.Errorf("host check as the owner: %q, exit %s (%v)", a, rc, err)
	}
	var reset struct {
		Removed []string `json:"removed"`
	}
	if a, rc := answer(1); json.Unmarshal([]byte(a), &reset) != nil || rc != "0" || len(reset.Removed) != 0 {
		t.Errorf("network reset as the owner: %q, exit %s", a, rc)
	}

	// The daemon kept the helper's records: one per call, the owner's.
	b, err := os.ReadFile(filepath.Join(state, "bangerd-root.log"))
	if err != nil {
		t.Fatal(err)
	}
	var methods []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var rec struct {
			Msg, Method string
			UID         int
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("helper log line: %v: %s", err, line)
		}
		if rec.Msg != "helper rpc completed" || rec.UID != nobody {
			t.Errorf("helper record: %s", line)
		}
		methods = append(methods, rec.Method)
	}
	if strings.Join(methods, " ") != "priv.ping priv.reset_network" {
		t.Errorf("helper calls: %v", methods)
	}
}
