package imagestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

const (
	// readBuf is how much is read at a time when copying or hashing.
	readBuf = 1 << 20
	// holeUnit is the granule of hole detection: a run of this many zero
	// bytes becomes a hole. A multiple of ext4's 4 KiB block.
	holeUnit = 64 << 10
)

// copySparse copies the file src to a new file dst with mode perm, leaving
// a hole wherever src has an aligned run of zeros (ext4 images and
// kernels are mostly zeros or not at all; either way nothing is lost), and
// syncs dst. It returns the number of bytes copied.
func copySparse(ctx context.Context, src, dst string, perm os.FileMode) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", dst, err)
	}
	n, err := copySparseTo(ctx, out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return n, nil
}

// copySparseTo copies in to out from their start, seeking over zero runs.
func copySparseTo(ctx context.Context, out *os.File, in io.Reader) (int64, error) {
	buf := make([]byte, readBuf)
	zero := make([]byte, holeUnit)
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, rerr := io.ReadFull(in, buf)
		for off := 0; off < n; off += holeUnit {
			chunk := buf[off:min(off+holeUnit, n)]
			if bytes.Equal(chunk, zero[:len(chunk)]) {
				if _, err := out.Seek(int64(len(chunk)), io.SeekCurrent); err != nil {
					return total, err
				}
			} else if _, err := out.Write(chunk); err != nil {
				return total, err
			}
			total += int64(len(chunk))
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return total, rerr
		}
	}
	// A trailing hole is made by the size, not by a write.
	return total, out.Truncate(total)
}

// Hashes of a part (Part.Hash).
const (
	// HashFile is the sha256 of the file's bytes.
	HashFile = ""
	// HashNonzeroBlocks is the sha256 of each holeUnit-aligned block of
	// the file that is not all zeros, as its offset (8 bytes, big
	// endian) then its bytes, and at the end the file's size. It is the
	// same for the same content however it lies in holes and written
	// zeros, and it never hashes the zeros that are most of a root
	// filesystem (its free space, the headroom VMs write into).
	HashNonzeroBlocks = "sha256-nonzero-blocks"
)

// hashFile returns the size and the hex hash (algo, a Hash* constant) of
// the file at path. With punch set it also turns aligned runs of zeros
// into holes: mkfs.ext4 writes the journal and the inode tables out as
// zeros, tens of MiB per image that need not take disk space. The bytes
// read back are the same.
//
// Holes are not read (SEEK_DATA/SEEK_HOLE): a root filesystem is mostly
// holes, and reading them costs as much again as hashing them.
func hashFile(ctx context.Context, path, algo string, punch bool) (int64, string, error) {
	flag := os.O_RDONLY
	if punch {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return 0, "", fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, "", err
	}
	size := fi.Size()
	h := sha256.New()
	buf := make([]byte, readBuf)
	zero := make([]byte, readBuf)
	fd := int(f.Fd())
	var hashed int64 // HashFile: the bytes hashed so far, holes as zeros
	zerosTo := func(end int64) {
		for hashed < end {
			n := min(end-hashed, int64(len(zero)))
			h.Write(zero[:n])
			hashed += n
		}
	}
	var runStart int64 = -1 // start of a run of zeros read, to punch
	flush := func(end int64) error {
		if runStart < 0 || !punch {
			runStart = -1
			return nil
		}
		start := runStart
		runStart = -1
		err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, start, end-start)
		if err == unix.EOPNOTSUPP {
			// A filesystem without holes just keeps the zeros.
			punch = false
			return nil
		}
		return err
	}
	var offset [8]byte
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return 0, "", err
		}
		// Whole blocks, aligned, whatever the extents are: a block is
		// hashed the same wherever a hole begins in it.
		data, hole := dataExtent(fd, off, size)
		data = max(off, data&^(holeUnit-1))
		hole = min(size, roundUp(hole, holeUnit))
		if punch && data > off {
			// What SEEK_DATA skips reads as zeros, but may hold disk:
			// ext4 reports unwritten extents (mkfs.ext4 allocates the
			// journal and inode tables so) as holes.
			runStart = off
			if err := flush(data); err != nil {
				return 0, "", fmt.Errorf("punch holes in %s: %w", path, err)
			}
		}
		for off = data; off < hole; {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), hole-off)], off)
			if n == 0 && err != nil {
				return 0, "", fmt.Errorf("read %s: %w", path, err)
			}
			if algo == HashFile {
				zerosTo(off)
				h.Write(buf[:n])
				hashed = off + int64(n)
			}
			for i := 0; i < n; i += holeUnit {
				chunk := buf[i:min(i+holeUnit, n)]
				pos := off + int64(i)
				if bytes.Equal(chunk, zero[:len(chunk)]) {
					if runStart < 0 {
						runStart = pos
					}
					continue
				}
				if algo == HashNonzeroBlocks {
					binary.BigEndian.PutUint64(offset[:], uint64(pos))
					h.Write(offset[:])
					h.Write(chunk)
				}
				if err := flush(pos); err != nil {
					return 0, "", fmt.Errorf("punch holes in %s: %w", path, err)
				}
			}
			off += int64(n)
		}
		if err := flush(off); err != nil {
			return 0, "", fmt.Errorf("punch holes in %s: %w", path, err)
		}
	}
	switch algo {
	case HashFile:
		zerosTo(size)
	case HashNonzeroBlocks:
		binary.BigEndian.PutUint64(offset[:], uint64(size))
		h.Write(offset[:])
	default:
		return 0, "", fmt.Errorf("hash %s: unknown algorithm %q", path, algo)
	}
	if flag == os.O_RDWR {
		if err := f.Sync(); err != nil {
			return 0, "", fmt.Errorf("sync %s: %w", path, err)
		}
	}
	return size, hex.EncodeToString(h.Sum(nil)), nil
}

// dataExtent returns where the next data at or after off starts, and
// where the hole after it starts (size at the end). A filesystem without
// SEEK_DATA has all data.
func dataExtent(fd int, off, size int64) (data, hole int64) {
	data, err := unix.Seek(fd, off, unix.SEEK_DATA)
	if err == unix.ENXIO {
		return size, size // only a hole up to the end
	}
	if err != nil {
		return off, size
	}
	hole, err = unix.Seek(fd, data, unix.SEEK_HOLE)
	if err != nil || hole > size {
		hole = size
	}
	return data, hole
}

// syncPath fsyncs a file or directory, so a rename that publishes it
// cannot reach the disk before its contents.
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}
