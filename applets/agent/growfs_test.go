package agent

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// growFS on a mounted file system whose loop device grows under it, as a
// guest's disk is larger than its image's file system: it grows to the
// device's size once, and then has nothing to do.
func TestGrowFSOnLoopDevice(t *testing.T) {
	if !hasCap(unix.CAP_SYS_ADMIN) || !hasCap(unix.CAP_SYS_RESOURCE) {
		t.Skip("mounting a loop device and resizing need CAP_SYS_ADMIN and CAP_SYS_RESOURCE, which PID 1 of a guest has")
	}
	for _, tool := range []string{"mkfs.ext4", "losetup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	dir := t.TempDir()
	file, mnt := filepath.Join(dir, "fs.ext4"), filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	run("mkfs.ext4", "-q", "-F", "-t", "ext4", "-b", "4096", file, "64M")
	loop, err := exec.Command("losetup", "-f", "--show", file).Output()
	if err != nil {
		t.Skipf("no loop device: %v", err)
	}
	dev := strings.TrimSpace(string(loop))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		t.Skipf("mount %s: %v", dev, err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })

	if before, after, err := growFS(mnt); err != nil || before != 64<<20 || after != before {
		t.Errorf("the device's size: %d to %d bytes, %v; want 64 MiB, unchanged", before, after, err)
	}
	if err := os.Truncate(file, 256<<20); err != nil {
		t.Fatal(err)
	}
	run("losetup", "-c", dev)
	if before, after, err := growFS(mnt); err != nil || before != 64<<20 || after != 256<<20 {
		t.Fatalf("grown: %d to %d bytes, %v; want 64 MiB to 256 MiB", before, after, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(mnt, &fs); err != nil || uint64(fs.Blocks)*uint64(fs.Bsize) < 200<<20 {
		t.Errorf("statfs after growing: %d blocks of %d, %v", fs.Blocks, fs.Bsize, err)
	}
	if before, after, err := growFS(mnt); err != nil || before != 256<<20 || after != before {
		t.Errorf("again: %d to %d bytes, %v; want 256 MiB, unchanged", before, after, err)
	}
	// A file system that is not ext4 is left alone.
	if before, after, err := growFS("/proc"); err != nil || before != 0 || after != 0 {
		t.Errorf("/proc: %d to %d bytes, %v", before, after, err)
	}
}

// The superblock of file systems mkfs.ext4 makes: the block count and
// size it was told.
// hasCap says whether the process has capability c in effect.
func hasCap(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(c%32)) != 0
}

func TestReadSuperblockOfMkfs(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("no mkfs.ext4 (package e2fsprogs)")
	}
	for _, c := range []struct {
		args      []string
		blocks    uint64
		blockSize uint64
	}{
		{[]string{"-b", "4096", "-O", "64bit"}, 16384, 4096},
		{[]string{"-b", "4096", "-O", "^64bit"}, 16384, 4096},
		{[]string{"-b", "1024"}, 65536, 1024},
	} {
		file := filepath.Join(t.TempDir(), "fs.ext4")
		args := append(append([]string{"-q", "-F", "-t", "ext4"}, c.args...), file, "64M")
		if out, err := exec.Command("mkfs.ext4", args...).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.ext4 %v: %v\n%s", args, err, out)
		}
		sb, err := readSuperblock(file)
		if err != nil || sb.blocks != c.blocks || sb.blockSize != c.blockSize {
			t.Errorf("mkfs.ext4 %v: %+v, %v; want %d blocks of %d", c.args, sb, err, c.blocks, c.blockSize)
		}
	}
}

func TestParseSuperblock(t *testing.T) {
	le := binary.LittleEndian
	sb := func(incompat uint32) []byte {
		b := make([]byte, superblockSize)
		le.PutUint16(b[sbMagic:], 0xef53)
		le.PutUint32(b[sbLogBlockSize:], 2) // 4 KiB
		le.PutUint32(b[sbBlocksCountLo:], 7)
		le.PutUint32(b[sbBlocksCountHi:], 1)
		le.PutUint32(b[sbFeatureIncompat:], incompat)
		return b
	}
	if got, err := parseSuperblock(sb(incompat64bit)); err != nil || got != (superblock{blocks: 1<<32 + 7, blockSize: 4096}) {
		t.Errorf("64bit: %+v, %v", got, err)
	}
	// Without the 64bit feature the high half is not the file system's.
	if got, err := parseSuperblock(sb(0)); err != nil || got != (superblock{blocks: 7, blockSize: 4096}) {
		t.Errorf("32-bit: %+v, %v", got, err)
	}
	bad := sb(0)
	bad[sbMagic] = 0
	if _, err := parseSuperblock(bad); err == nil {
		t.Error("a bad magic number is taken")
	}
	huge := sb(0)
	le.PutUint32(huge[sbLogBlockSize:], 40)
	if _, err := parseSuperblock(huge); err == nil {
		t.Error("a block size of 2^40 KiB is taken")
	}
	if _, err := parseSuperblock(sb(0)[:100]); err == nil {
		t.Error("a short superblock is taken")
	}
}
