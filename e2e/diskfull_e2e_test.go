package e2e_test

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"banger/internal/api"
)

// A state directory that fills up, for real: a small tmpfs under the
// daemon. Each failure says the directory is full (exit 7, the path),
// loses no record, leaves nothing half-written, and banger works again
// once there is room.
func TestFullStateDirectory(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	if err := syscall.Mount("tmpfs", s.state, "tmpfs", 0, "size=640m,mode=0700"); err != nil {
		t.Skipf("mount a tmpfs for the state directory: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(s.state, syscall.MNT_DETACH) })
	s.daemon()
	s.banger("vm", "run", "--rm", "--", "true").want(t, 0)
	s.banger("vm", "create", "--name", "keep", "--no-start").want(t, 0)
	s.waitStandbysReady(t, 1)
	vmsBefore, imagesBefore := s.vmNames(), s.imageNames()
	state := filepath.Join(s.state, "banger")

	// A root file system bigger than the room left: the import fails
	// while it builds the image.
	root := filepath.Join(s.dir, "big")
	os.MkdirAll(root, 0o755)
	big := make([]byte, 48<<20)
	rand.Read(big)
	os.WriteFile(filepath.Join(root, "blob"), big, 0o644)
	filler := filepath.Join(state, "filler")
	fill(t, filler, 16<<20)
	kernels := []string{hostKernel(t)}
	r := s.banger("image", "import", "--kernel", kernels[0], "--rootfs-dir", root, "big").want(t, 7)
	wantFull(t, r, state)
	s.wantIntact(t, vmsBefore, imagesBefore)

	// Saving a snapshot that does not fit: image warm fails, the image
	// keeps the snapshot it had.
	r = s.banger("image", "warm", "--memory", "512M", api.TinyImage).want(t, 7)
	wantFull(t, r, state)
	s.wantIntact(t, vmsBefore, imagesBefore)

	// No room at all: a create fails at once.
	fill(t, filler+"2", 0)
	r = s.banger("vm", "create", "--cold", "--name", "new").want(t, 7)
	wantFull(t, r, state)
	s.wantIntact(t, vmsBefore, imagesBefore)

	// Room again: everything works, warm starts included.
	os.Remove(filler)
	os.Remove(filler + "2")
	s.banger("vm", "create", "--cold", "--name", "new").want(t, 0)
	wantStart(t, s.banger("vm", "run", "--rm", "--", "true").want(t, 0), true)
	s.banger("image", "import", "--kernel", kernels[0], "--rootfs-dir", root, "big").want(t, 0)
	s.banger("vm", "delete", "new").want(t, 0)
	s.banger("vm", "delete", "keep").want(t, 0)
	s.banger("image", "delete", "big").want(t, 0)
	s.assertNothingLeft()
}

// fill writes a file of zeros until the file system has at most leave
// bytes free.
func fill(t *testing.T, path string, leave int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil && leave > 0 {
		t.Fatal(err)
	}
	if err != nil {
		return // no room for even the file: full
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for {
		var st syscall.Statfs_t
		syscall.Statfs(path, &st)
		free := int64(st.Bavail) * st.Bsize
		if free <= leave {
			return
		}
		n := min(int64(len(chunk)), free-leave)
		if _, err := f.Write(chunk[:n]); err != nil {
			return
		}
	}
}

// wantFull checks that a failure says the state directory is full.
func wantFull(t *testing.T, r result, state string) {
	t.Helper()
	if !strings.Contains(r.stderr, "unavailable: the state directory "+state+" is out of space") || !strings.Contains(r.stderr, "(op-") {
		t.Errorf("a full state directory, said as:\n%s", r.stderr)
	}
}

func (s *sandbox) vmNames() []string {
	var vms []api.VM
	s.banger("vm", "list", "--json").want(s.t, 0).json(s.t, &vms)
	var names []string
	for _, v := range vms {
		names = append(names, v.Name+" "+v.State)
	}
	return names
}

func (s *sandbox) imageNames() []string {
	var ims []api.Image
	s.banger("image", "list", "--json").want(s.t, 0).json(s.t, &ims)
	var names []string
	for _, im := range ims {
		names = append(names, im.Name)
	}
	return names
}

// wantIntact checks that the records are as they were and that no
// half-written file is left in the state directory.
func (s *sandbox) wantIntact(t *testing.T, vms, images []string) {
	t.Helper()
	if got := s.vmNames(); !slices.Equal(got, vms) {
		t.Errorf("vms %v, were %v", got, vms)
	}
	if got := s.imageNames(); !slices.Equal(got, images) {
		t.Errorf("images %v, were %v", got, images)
	}
	state := filepath.Join(s.state, "banger")
	filepath.Walk(state, func(path string, fi os.FileInfo, err error) error {
		inTmp := strings.HasPrefix(path, filepath.Join(state, "images", ".tmp")+"/")
		if err == nil && (strings.Contains(fi.Name(), "partial") || inTmp) {
			t.Errorf("left half-written: %s", path)
		}
		return nil
	})
	if len(s.vmDirs()) != len(vms) {
		t.Errorf("vm directories %v for vms %v", s.vmDirs(), vms)
	}
}
