package e2e_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
)

// Warm starts on real guests: the first boot of an image saves a
// snapshot, later VMs restore it, each with an identity and a disk of its
// own.

// wantStart checks from a create's stages (on stderr) whether the VM was
// restored (from a standby or from the snapshot) or booted.
func wantStart(t testing.TB, r result, warm bool) {
	t.Helper()
	restored := (strings.Contains(r.stderr, "take standby done") || strings.Contains(r.stderr, "restore done")) && strings.Contains(r.stderr, "resume agent done")
	booted := strings.Contains(r.stderr, "wait for agent done")
	if restored != warm || booted == warm {
		t.Errorf("want warm=%v; stages:\n%s", warm, r.stderr)
	}
}

// guestFacts is what must differ between two guests restored from one
// snapshot.
func guestFacts(t *testing.T, s *sandbox, vm string) []string {
	t.Helper()
	r := s.banger("vm", "exec", vm, "--", "sh", "-c",
		"hostname; cat /etc/machine-id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s")
	r.want(t, 0)
	facts := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(facts) != 4 {
		t.Fatalf("facts of %s: %q", vm, r.stdout)
	}
	return facts
}

func TestWarmStarts(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	d := s.daemon()

	// The first boot saves the image's snapshot.
	r := s.banger("vm", "run", "--rm", "--", "true").want(t, 0)
	wantStart(t, r, false)
	if !strings.Contains(r.stderr, "save warm snapshot done") {
		t.Errorf("no snapshot saved:\n%s", r.stderr)
	}
	var im api.Image
	s.banger("image", "show", "--json", api.TinyImage).want(t, 0).json(t, &im)
	if im.Warm == nil || im.Warm.MemoryBytes == 0 || im.Warm.CPUs != api.DefaultCPUs || im.Warm.MemoryMiB != api.DefaultMemoryMiB {
		t.Fatalf("image after the first boot: %+v", im.Warm)
	}

	// The daemon restores one ahead of time, and the next create takes
	// that very process.
	s.waitStandbysReady(t, 1)
	standby := s.standbyPIDs()[0]
	// Two VMs from it: each restored, each its own.
	for _, vm := range []string{"a", "b"} {
		wantStart(t, s.banger("vm", "create", "--name", vm).want(t, 0), true)
	}
	a, b := guestFacts(t, s, "a"), guestFacts(t, s, "b")
	for i, what := range []string{"hostname", "machine id", "random bytes"} {
		if a[i] == b[i] {
			t.Errorf("a and b share their %s: %q", what, a[i])
		}
	}
	if a[0] != "a" || b[0] != "b" {
		t.Errorf("hostnames %q, %q", a[0], b[0])
	}
	// The clock was set on resume, not left at the snapshot's time.
	for _, f := range [][]string{a, b} {
		if secs, err := strconv.ParseInt(f[3], 10, 64); err != nil || time.Since(time.Unix(secs, 0)).Abs() > time.Minute {
			t.Errorf("guest clock %q, host %d", f[3], time.Now().Unix())
		}
	}
	var va, vb api.VM
	s.banger("vm", "show", "--json", "a").want(t, 0).json(t, &va)
	s.banger("vm", "show", "--json", "b").want(t, 0).json(t, &vb)
	if va.BootID == "" || va.BootID == vb.BootID {
		t.Errorf("boot ids %q, %q", va.BootID, vb.BootID)
	}
	if va.PID != standby {
		t.Errorf("a runs in qemu %d, not in the standby %d", va.PID, standby)
	}

	// Disk writes stay in their VM.
	s.banger("vm", "exec", "a", "--", "sh", "-c", "echo mine > /root/only-a && sync").want(t, 0)
	s.banger("vm", "exec", "b", "--", "test", "-e", "/root/only-a").want(t, 1)

	// A restored VM survives a daemon restart like a booted one.
	d.Process.Signal(syscall.SIGKILL)
	waitFor(t, 10*time.Second, func() bool { return syscall.Kill(d.Process.Pid, 0) != nil })
	s.daemon()
	if r := s.banger("vm", "exec", "a", "--", "cat", "/root/only-a").want(t, 0); r.stdout != "mine\n" {
		t.Errorf("a after the daemon restart: %q", r.stdout)
	}
	var again api.VM
	s.banger("vm", "show", "--json", "a").want(t, 0).json(t, &again)
	if again.State != "running" || again.BootID != va.BootID {
		t.Errorf("a after the daemon restart: %+v, was %+v", again, va)
	}

	// Deleting one leaves the other whole.
	s.banger("vm", "delete", "a").want(t, 0)
	if f := guestFacts(t, s, "b"); f[0] != "b" || f[1] != b[1] {
		t.Errorf("b after a's delete: %q", f)
	}
	s.banger("vm", "delete", "b").want(t, 0)

	// --cold boots although a snapshot exists.
	wantStart(t, s.banger("vm", "run", "--rm", "--cold", "--", "true").want(t, 0), false)
	s.assertNothingLeft()
}

// A snapshot is used only with the image it was taken of: an image
// imported again under the same name boots, and saves its own.
func TestWarmSnapshotFollowsItsImage(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	kernels := []string{hostKernel(t)}
	importTiny := func(motd string) {
		root := filepath.Join(s.dir, "root-"+motd)
		os.MkdirAll(filepath.Join(root, "etc"), 0o755)
		os.MkdirAll(filepath.Join(root, "bin"), 0o755)
		os.WriteFile(filepath.Join(root, "etc", "motd"), []byte(motd+"\n"), 0o644)
		// busybox runs the applet its name says.
		bb, err := os.ReadFile("/bin/busybox")
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(root, "bin", "cat"), bb, 0o755)
		s.banger("image", "import", "--kernel", kernels[0], "--rootfs-dir", root, "tiny").want(t, 0)
	}
	runTiny := func(warm bool, want string) {
		t.Helper()
		r := s.banger("vm", "run", "--rm", "--image", "tiny", "--", "cat", "/etc/motd").want(t, 0)
		wantStart(t, r, warm)
		if r.stdout != want+"\n" {
			t.Errorf("motd %q, want %q", r.stdout, want)
		}
	}
	importTiny("one")
	runTiny(false, "one")
	runTiny(true, "one")
	s.banger("image", "delete", "tiny").want(t, 0)
	if _, err := os.Stat(filepath.Join(s.state, "banger", "snapshots", "tiny")); !os.IsNotExist(err) {
		t.Errorf("snapshot of a deleted image: %v", err)
	}
	importTiny("two")
	runTiny(false, "two")
	runTiny(true, "two")

	// image warm saves one for another shape, and VMs of that shape
	// restore it.
	var w api.WarmSnapshot
	s.banger("image", "warm", "--json", "--memory", "320M", "tiny").want(t, 0).json(t, &w)
	if w.MemoryMiB != 320 || w.MemoryBytes == 0 {
		t.Errorf("image warm: %+v", w)
	}
	r := s.banger("vm", "run", "--rm", "--image", "tiny", "--memory", "320M", "--", "cat", "/etc/motd").want(t, 0)
	wantStart(t, r, true)
	s.assertNothingLeft()
}

// A standby lives only as long as its daemon and its image: a daemon
// that stops ends it, the next daemon sweeps one a killed daemon left,
// and deleting the image drops it. None of it leaves a process or a
// directory behind.
func TestStandbyLifecycle(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	d := s.daemon()
	standbys := func() []string {
		dirs, _ := filepath.Glob(filepath.Join(s.state, "banger", "standby", "*"))
		return dirs
	}
	// A zombie (its parent, the killed daemon, gone) is not alive.
	alive := func(pid int) bool {
		stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		if err != nil {
			return false
		}
		_, rest, _ := strings.Cut(string(stat), ") ")
		return !strings.HasPrefix(rest, "Z")
	}

	s.banger("vm", "run", "--rm", "--", "true").want(t, 0)
	waitFor(t, time.Minute, func() bool { return len(s.standbyPIDs()) == 1 })
	first := s.standbyPIDs()[0]

	// Killed, the daemon cannot end it; the next one does.
	d.Process.Signal(syscall.SIGKILL)
	waitFor(t, 10*time.Second, func() bool { return syscall.Kill(d.Process.Pid, 0) != nil })
	if !alive(first) {
		t.Fatal("the standby died with its daemon (it runs detached, as VMs do)")
	}
	s.daemon()
	if alive(first) || len(standbys()) != 0 {
		t.Errorf("after a restart: standby %d alive %v, dirs %v", first, alive(first), standbys())
	}

	// A create makes the next one; a clean stop ends it.
	s.banger("vm", "run", "--rm", "--", "true").want(t, 0)
	waitFor(t, time.Minute, func() bool { return len(s.standbyPIDs()) == 1 })
	second := s.standbyPIDs()[0]
	s.stopDaemon()
	if alive(second) || len(standbys()) != 0 {
		t.Errorf("after a stop: standby %d alive %v, dirs %v", second, alive(second), standbys())
	}

	// Deleting its image drops it.
	s.daemon()
	s.banger("vm", "run", "--rm", "--", "true").want(t, 0)
	waitFor(t, time.Minute, func() bool { return len(s.standbyPIDs()) == 1 })
	third := s.standbyPIDs()[0]
	s.banger("image", "delete", api.TinyImage).want(t, 0)
	if alive(third) || len(standbys()) != 0 {
		t.Errorf("after the image's delete: standby %d alive %v, dirs %v", third, alive(third), standbys())
	}
	s.assertNothingLeft()
}

// A standby's QEMU opens a placeholder disk before its snapshot exists;
// the snapshot's disk is copied over it in place, and QEMU must read it
// afresh when the state loads. A marker written into the snapshot's disk,
// past the file system (no guest cache holds it), is what a VM that takes
// the standby reads there.
func TestStandbyReadsTheSnapshotsDisk(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	env := s.env
	s.env = append(env, "BANGER_STANDBY=false")
	s.daemon()
	s.banger("image", "warm", api.TinyImage).want(t, 0)
	disk := filepath.Join(s.state, "banger", "snapshots", api.TinyImage, "disk.qcow2")
	out, err := exec.Command("qemu-img", "info", "--output=json", disk).Output()
	var info struct {
		Size int64 `json:"virtual-size"`
	}
	if err == nil {
		err = json.Unmarshal(out, &info)
	}
	if err != nil || info.Size < 1<<20 {
		t.Fatalf("qemu-img info %s: %v (%s)", disk, err, out)
	}
	last := info.Size/512 - 1
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0xab %d 512", last*512), disk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	s.stopDaemon()

	s.env = env
	s.daemon()
	// This one restores from the snapshot itself, then the standby is made.
	s.banger("vm", "run", "--rm", "--", "true").want(t, 0)
	s.waitStandbysReady(t, 1)
	standby := s.standbyPIDs()
	r := s.banger("vm", "run", "-d", "--name", "taker").want(t, 0)
	wantStart(t, r, true)
	var vm api.VM
	s.banger("vm", "show", "--json", "taker").want(t, 0).json(t, &vm)
	if len(standby) != 1 || vm.PID != standby[0] {
		t.Fatalf("taker runs in qemu %d, not in the standby %v", vm.PID, standby)
	}
	r = s.banger("vm", "exec", "taker", "--", "sh", "-c", fmt.Sprintf("dd if=/dev/vda bs=512 skip=%d count=1 2>/dev/null | od -An -tx1 | head -1", last)).want(t, 0)
	if got := strings.Join(strings.Fields(r.stdout), ""); got != strings.Repeat("ab", 16) {
		t.Errorf("the standby's disk ends with %q, not the snapshot's marker", r.stdout)
	}
	s.banger("vm", "delete", "taker").want(t, 0)
	s.assertNothingLeft()
}
