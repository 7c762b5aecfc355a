package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"banger/logging"
)

// ext4ResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64) in the
// kernel's fs/ext4/ext4.h; golang.org/x/sys/unix does not define it. The
// direction and size bits are laid out as on x86 and arm64.
const ext4ResizeFS = 0x40086610

// growRoot grows the root file system to fill its disk. A VM created
// with --disk-size has a disk larger than its image's file system, whose
// extra space is of no use until ext4 knows of it; the guest may have no
// resize2fs, so the agent does what it does to a mounted file system.
// A guest whose file system keeps its image's size still works: a
// failure is logged, not fatal.
func growRoot(log zerolog.Logger) {
	start := time.Now()
	before, after, err := growFS("/")
	switch {
	case err != nil:
		log.Error().Err(err).Msg("root file system not grown to its disk")
	case after > before:
		log.Info().Uint64("old_bytes", before).Uint64("new_bytes", after).
			Float64("duration_ms", logging.Millis(time.Since(start))).Msg("root file system grown to its disk")
	}
}

// growFS grows the ext4 file system mounted at dir to the size of its
// block device, online, and returns its sizes in bytes before and after.
// Other file systems are left alone. When the sizes match, the common
// case, it costs a stat, a statfs, a readlink and two small reads.
func growFS(dir string) (before, after uint64, err error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	if fs.Type != unix.EXT4_SUPER_MAGIC {
		return 0, 0, nil
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("stat %s: %w", dir, err)
	}
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	data, err := os.ReadFile(sys + "/size")
	if err != nil {
		return 0, 0, fmt.Errorf("the size of %s's device: %w", dir, err)
	}
	sectors, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("the size of %s's device: %w", dir, err)
	}
	// The file system's size is its superblock's block count: statfs
	// leaves out ext4's own metadata (inode tables, journal), so its
	// count is smaller than the disk's even when ext4 fills it. The
	// superblock is read from the device node, which devtmpfs names as
	// the kernel does (/sys/dev/block/254:0 -> .../block/vda).
	link, err := os.Readlink(sys)
	if err != nil {
		return 0, 0, fmt.Errorf("the device of %s: %w", dir, err)
	}
	dev := "/dev/" + filepath.Base(link)
	sb, err := readSuperblock(dev)
	if err != nil {
		return 0, 0, err
	}
	blocks := sectors * 512 / sb.blockSize
	if blocks <= sb.blocks {
		return sb.size(), sb.size(), nil
	}
	// ext4 grows only to whole block groups that can hold their own
	// metadata: a disk a few MiB past such a boundary keeps asking, at
	// every boot, for the few blocks the kernel leaves out (at the cost
	// of this ioctl, which then adds nothing).
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), ext4ResizeFS, uintptr(unsafe.Pointer(&blocks))); e != 0 {
		return 0, 0, fmt.Errorf("grow %s (%s) from %d to %d blocks of %d bytes: EXT4_IOC_RESIZE_FS: %w (the kernel's log says why)",
			dir, dev, sb.blocks, blocks, sb.blockSize, e)
	}
	now, err := readSuperblock(dev)
	if err != nil {
		return 0, 0, err
	}
	return sb.size(), now.size(), nil
}

// superblock is what growFS reads of an ext4 superblock.
type superblock struct {
	blocks    uint64
	blockSize uint64
}

func (s superblock) size() uint64 { return s.blocks * s.blockSize }

// Where an ext4 superblock is and where the fields growFS reads lie in
// it (the kernel's struct ext4_super_block).
const (
	superblockOffset  = 1024
	superblockSize    = 1024
	sbBlocksCountLo   = 0x04
	sbLogBlockSize    = 0x18
	sbMagic           = 0x38
	sbFeatureIncompat = 0x60
	sbBlocksCountHi   = 0x150
	incompat64bit     = 0x80
)

// readSuperblock reads the superblock of the ext4 file system on dev. A
// mounted file system's is the kernel's current copy: a buffered read of
// the device shares the page cache that ext4 keeps it in.
func readSuperblock(dev string) (superblock, error) {
	f, err := os.Open(dev)
	if err != nil {
		return superblock{}, err
	}
	defer f.Close()
	buf := make([]byte, superblockSize)
	if _, err := f.ReadAt(buf, superblockOffset); err != nil {
		return superblock{}, fmt.Errorf("read the superblock of %s: %w", dev, err)
	}
	sb, err := parseSuperblock(buf)
	if err != nil {
		return superblock{}, fmt.Errorf("%s: %w", dev, err)
	}
	return sb, nil
}

// parseSuperblock decodes the block count and block size of an ext4
// superblock.
func parseSuperblock(b []byte) (superblock, error) {
	le := binary.LittleEndian
	if len(b) < superblockSize || le.Uint16(b[sbMagic:]) != unix.EXT4_SUPER_MAGIC {
		return superblock{}, errors.New("no ext4 superblock")
	}
	logSize := le.Uint32(b[sbLogBlockSize:])
	if logSize > 6 { // blocks of 1 KiB to 64 KiB
		return superblock{}, fmt.Errorf("ext4 superblock with blocks of 2^%d KiB", logSize)
	}
	sb := superblock{blocks: uint64(le.Uint32(b[sbBlocksCountLo:])), blockSize: 1024 << logSize}
	// The high half counts only with the 64bit feature, as in the
	// kernel's ext4_blocks_count.
	if le.Uint32(b[sbFeatureIncompat:])&incompat64bit != 0 {
		sb.blocks |= uint64(le.Uint32(b[sbBlocksCountHi:])) << 32
	}
	return sb, nil
}
