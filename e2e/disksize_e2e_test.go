package e2e_test

import (
	"strconv"
	"strings"
	"testing"

	"banger/internal/api"
)

// --disk-size makes the guest's root file system as large as its disk,
// not only the disk: the agent grows ext4 at boot, once, and a warm start
// restores the grown file system with the snapshot's disk. Without it the
// root keeps the image's size.
func TestVMRunDiskSizeGrowsRoot(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	s.daemon()
	const gib = 1 << 30

	r := s.banger("vm", "run", "--rm", "--", "df", "-Pk", "/").want(t, 0)
	if size := rootSize(t, r); size > 3*gib/2 {
		t.Fatalf("the image's own root is %d bytes; this test wants one well under 2 GiB", size)
	}
	var im api.Image
	s.banger("image", "show", "--json", api.TinyImage).want(t, 0).json(t, &im)

	// A file larger than the image's whole root file system fits.
	// fallocate takes the blocks without writing them: quick under TCG.
	r = s.banger("vm", "run", "--rm", "--disk-size", "2G", "--", "sh", "-c", "df -Pk / && fallocate -l 1536M /big").want(t, 0)
	wantStart(t, r, false)
	if size := rootSize(t, r); size < 18*gib/10 {
		t.Errorf("with --disk-size 2G the root is %d bytes", size)
	}
	s.waitStandbysReady(t, 2) // the first run's shape's, and this one's
	r = s.banger("vm", "run", "--rm", "--disk-size", "2G", "--", "df", "-Pk", "/").want(t, 0)
	wantStart(t, r, true)
	if size := rootSize(t, r); size < 18*gib/10 {
		t.Errorf("restored with --disk-size 2G, the root is %d bytes", size)
	}

	// The agent's record of it: grown once, from the image's size to
	// the disk's, at the one cold boot with the larger disk.
	var grown []map[string]any
	for _, rec := range s.daemonRecords(t) {
		if rec["applet"] != "banger-agent" {
			continue
		}
		switch rec["msg"] {
		case "root file system grown to its disk":
			grown = append(grown, rec)
		case "root file system not grown to its disk":
			t.Errorf("the agent failed to grow the root: %v", rec)
		}
	}
	if len(grown) != 1 || grown[0]["old_bytes"] != float64(im.RootfsMiB<<20) || grown[0]["new_bytes"] != float64(2*gib) {
		t.Errorf("the agent's records of growing the root (the image's is %d MiB): %v", im.RootfsMiB, grown)
	}
	s.assertNothingLeft()
}

// rootSize reads the size of / from the output of df -Pk /.
func rootSize(t *testing.T, r result) int64 {
	t.Helper()
	for _, line := range strings.Split(r.stdout, "\n") {
		f := strings.Fields(line)
		if len(f) == 6 && f[5] == "/" {
			if kib, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				return kib << 10
			}
		}
	}
	t.Fatalf("no size of / in df's output:\n%s", r.stdout)
	return 0
}
