package layout

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// What a client dials must look as the daemon made it: a real directory
// of a trusted owner that others cannot write, and a socket in it.
func TestCheckDialable(t *testing.T) {
	me := os.Getuid()
	base := t.TempDir()
	dir := filepath.Join(base, "run")
	sock := filepath.Join(dir, "bangerd.sock")
	if err := CheckDialable(sock, me); err != nil {
		t.Errorf("nothing there yet: %v", err)
	}
	os.Mkdir(dir, 0o700)
	if err := CheckDialable(sock, me); err != nil {
		t.Errorf("a private directory: %v", err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := CheckDialable(sock, me); err != nil {
		t.Errorf("a private directory and a socket: %v", err)
	}
	for _, tc := range []struct {
		name, want string
		setup      func() string
	}{
		{"writable by others", "writable by others", func() string { os.Chmod(dir, 0o777); return sock }},
		{"a symlink", "is a symlink", func() string {
			os.Chmod(dir, 0o700)
			link := filepath.Join(base, "link")
			os.Symlink(dir, link)
			return filepath.Join(link, "bangerd.sock")
		}},
		{"not a socket", "is not a socket", func() string {
			f := filepath.Join(dir, "plain.sock")
			os.WriteFile(f, nil, 0o600)
			return f
		}},
		{"another owner", "owned by uid", func() string {
			if me != 0 {
				t.Skip("chown needs root")
			}
			other := filepath.Join(base, "other")
			os.Mkdir(other, 0o755)
			os.Chown(other, 65534, 65534)
			return filepath.Join(other, "bangerd.sock")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := CheckDialable(tc.setup(), me); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// The state directory under the fallback home is checked from that home
// down: a directory of another user's anywhere on the way is refused.
func TestEnsureStateUnderTheFallbackHome(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("chown needs root")
	}
	t.Setenv("TMPDIR", t.TempDir())
	root := fallbackHome()
	state := filepath.Join(root, ".local", "state", "banger")
	if err := EnsureState(state); err != nil {
		t.Fatalf("a fresh fallback home: %v", err)
	}
	os.RemoveAll(root)
	// Another user made the home first, and a state directory in it
	// that looks like ours.
	os.MkdirAll(state, 0o700)
	os.Chown(root, 65534, 65534)
	os.Chmod(root, 0o777)
	if err := EnsureState(state); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Errorf("another user's fallback home: %v", err)
	}
	// Elsewhere only the state directory itself is checked, as before.
	other := filepath.Join(t.TempDir(), "banger")
	if err := EnsureState(other); err != nil {
		t.Errorf("a state directory elsewhere: %v", err)
	}
}

func TestCheckInstanceDirSocketPathLimit(t *testing.T) {
	if err := CheckInstanceDir("/tmp/bgv123"); err != nil {
		t.Errorf("short dir: %v", err)
	}
	// The longest socket name decides: a directory that leaves exactly
	// room for it passes, one byte more fails.
	longest := 0
	for _, s := range InstanceSockets() {
		longest = max(longest, len(s))
	}
	fits := "/" + strings.Repeat("d", MaxSocketPath-longest-2)
	if err := CheckInstanceDir(fits); err != nil {
		t.Errorf("%d-byte dir: %v", len(fits), err)
	}
	err := CheckInstanceDir(fits + "x")
	if err == nil || !strings.Contains(err.Error(), "Linux allows 107") {
		t.Errorf("too long a dir: %v", err)
	}
}

func TestInstanceFilesAreDistinct(t *testing.T) {
	names := []string{Disk, Argv, PID, Console, EngineLog, QMPSocket, AgentSocket, NetSocket, WarmMemory}
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] || strings.Contains(n, "/") {
			t.Errorf("file name %q repeated or not a plain name", n)
		}
		seen[n] = true
	}
}

// The sockets of the instance directories banger makes fit sun_path: a
// VM's ("vm-" and a ULID) and a standby's (a ULID) under the system
// install's state directory and under a user's, whose name is as long as
// Debian allows (32).
func TestDefaultInstanceSocketsFit(t *testing.T) {
	const vmID = "vm-01M8T9YZQV2HJVHDGXP2R1QF8R"
	const standbyID = "01m8t9yzqv2hjvhdgxp2r1qf8r"
	for _, state := range []string{"/var/lib/banger", "/home/" + strings.Repeat("u", 32) + "/.local/state/banger"} {
		for _, dir := range []string{state + "/" + VMsDir + "/" + vmID, state + "/" + StandbyDir + "/" + standbyID} {
			if err := CheckInstanceDir(dir); err != nil {
				t.Error(err)
			}
		}
	}
}
