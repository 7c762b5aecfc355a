package imagestore

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"banger/applets/agent/boot"
	"banger/internal/errdefs"
)

// ext4Spec is an import of a root filesystem given as an ext4 image.
type ext4Spec struct {
	src     string // the user's image, never written
	disk    bool   // src is a VM's disk, flattened by qemu-img
	file    string // the store's copy, edited in place
	tmp     string // the import's temporary directory
	agent   string
	sizeMiB int // 0: keep the size unless the agent does not fit
}

// importExt4 copies an ext4 image into the store and edits the copy: it
// lets e2fsck repair what it safely can, resizes it when asked or when
// the agent would not fit, and writes the agent and the missing mount
// points into it with debugfs (no mount, no root). It returns notes for
// the manifest.
func importExt4(ctx context.Context, s ext4Spec) ([]string, error) {
	if err := copyExt4(ctx, s); err != nil {
		return nil, err
	}
	var notes []string
	// -p repairs only what is safe without a human; 1 means it did.
	res, err := run(ctx, toolRun{name: "e2fsck", args: []string{"-f", "-p", s.file}}, 1)
	if err != nil {
		if res.exitCode >= 4 {
			return nil, errdefs.Errorf(errdefs.ErrInvalid, "the ext4 image %s has errors e2fsck cannot repair by itself; run `e2fsck -f %s` (on a copy) and import it again", s.src, s.src)
		}
		return nil, fmt.Errorf("check the ext4 image: %w", err)
	}
	if res.exitCode == 1 {
		notes = append(notes, "e2fsck repaired the imported filesystem: "+lastLines(res.stdout, 2))
	}
	if err := resizeForAgent(ctx, s); err != nil {
		return nil, err
	}
	if err := placeAgent(ctx, s); err != nil {
		return nil, err
	}
	if s.disk {
		if err := forgetMachineID(ctx, s.file); err != nil {
			return nil, err
		}
	}
	return notes, nil
}

// copyExt4 puts the store's copy of the source in place: a sparse copy
// of an ext4 image, a VM's disk flattened to the raw filesystem its
// guest sees (sparse too: qemu-img skips zeroes). -U reads a disk the
// VM's engine process still has open (and locked); the caller holds
// that VM paused, its disk flushed.
func copyExt4(ctx context.Context, s ext4Spec) error {
	if !s.disk {
		if err := checkExt4Magic(s.src); err != nil {
			return err
		}
		if _, err := copySparse(ctx, s.src, s.file, 0o644); err != nil {
			return fmt.Errorf("copy the ext4 image: %w", err)
		}
		return nil
	}
	if _, err := run(ctx, toolRun{name: "qemu-img", args: []string{"convert", "-U", "-O", "raw", s.src, s.file}}); err != nil {
		return fmt.Errorf("copy the VM's disk: %w", err)
	}
	return checkExt4Magic(s.file)
}

// forgetMachineID removes the machine id a VM's guest was given, so each
// VM of an image committed from it gets its own at boot (the agent makes
// one when there is none), as the warm starts give each restored guest.
func forgetMachineID(ctx context.Context, file string) error {
	if st, err := statInImage(ctx, file, machineIDPath); err != nil || st.typ != "regular" && st.typ != "symlink" {
		return nil // none to forget (a directory there is the guest's odd choice)
	}
	if _, err := debugfs(ctx, "", file, true, "rm "+debugfsQuote(machineIDPath)+"\n"); err != nil {
		return fmt.Errorf("remove the VM's machine id: %w", err)
	}
	return nil
}

// machineIDPath is the guest's machine id, which names one system.
const machineIDPath = "/etc/machine-id"

// checkExt4Magic refuses a file without an ext2/3/4 superblock, with a
// message that helps with the usual mistake, a whole-disk image.
func checkExt4Magic(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("open the ext4 image: %w", err)
	}
	defer f.Close()
	var magic [2]byte
	// The superblock is at 1024; s_magic is 56 bytes into it.
	if _, err := f.ReadAt(magic[:], 1024+56); err != nil && err != io.EOF || binary.LittleEndian.Uint16(magic[:]) != 0xef53 {
		return errdefs.Errorf(errdefs.ErrInvalid, "%s is not an ext2/3/4 filesystem image; a whole-disk image with a partition table will not do, give the partition's filesystem", file)
	}
	return nil
}

// fsGeometry is the size of an ext4 filesystem.
type fsGeometry struct {
	blockSize, blocks, freeBlocks int64
}

func readGeometry(ctx context.Context, file string) (fsGeometry, error) {
	res, err := run(ctx, toolRun{name: "dumpe2fs", args: []string{"-h", file}})
	if err != nil {
		return fsGeometry{}, fmt.Errorf("read the filesystem's size: %w", err)
	}
	var g fsGeometry
	for _, line := range strings.Split(res.stdout, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "Block size":
			g.blockSize = n
		case "Block count":
			g.blocks = n
		case "Free blocks":
			g.freeBlocks = n
		}
	}
	if g.blockSize == 0 || g.blocks == 0 {
		return g, fmt.Errorf("read the filesystem's size: dumpe2fs gave no block size or count")
	}
	return g, nil
}

// resizeForAgent resizes the copy to the size asked for, or grows it when
// the agent would not fit, and trims the file to the filesystem.
func resizeForAgent(ctx context.Context, s ext4Spec) error {
	g, err := readGeometry(ctx, s.file)
	if err != nil {
		return err
	}
	fi, err := os.Stat(s.agent)
	if err != nil {
		return fmt.Errorf("stat the agent binary: %w", err)
	}
	cur := g.blocks * g.blockSize
	need := roundUp(fi.Size(), g.blockSize) + mib // the agent, and its extent blocks
	target := cur
	switch {
	case s.sizeMiB > 0:
		target = int64(s.sizeMiB) * mib
	case g.freeBlocks*g.blockSize < need:
		target = roundUp(cur+need, 64*mib)
	}
	if target != cur {
		res, err := run(ctx, toolRun{name: "resize2fs", args: []string{s.file, strconv.FormatInt(target/1024, 10) + "K"}})
		if err != nil {
			if s.sizeMiB > 0 && target < cur {
				return errdefs.Errorf(errdefs.ErrInvalid, "the ext4 image cannot shrink to %d MiB: %s; give a larger size, or none to keep its own", s.sizeMiB, lastLines(res.stderr, 1))
			}
			return fmt.Errorf("resize the root filesystem: %w", err)
		}
		if g, err = readGeometry(ctx, s.file); err != nil {
			return err
		}
		if g.freeBlocks*g.blockSize < need {
			return errdefs.Errorf(errdefs.ErrInvalid, "the agent does not fit in the ext4 image at %d MiB; give a larger size", s.sizeMiB)
		}
	}
	// Bytes past the filesystem's end are of no use to a guest.
	if err := os.Truncate(s.file, g.blocks*g.blockSize); err != nil {
		return fmt.Errorf("trim the ext4 image: %w", err)
	}
	return nil
}

// placeAgent writes the agent to boot.AgentPath and makes the missing mount
// points, all root's. debugfs does not follow a symlinked /sbin (merged
// /usr) when it writes, but "cd /sbin/." does, so the agent is written
// from inside its directory.
func placeAgent(ctx context.Context, s ext4Spec) error {
	rootNames, err := listRoot(ctx, s.file)
	if err != nil {
		return err
	}
	var b strings.Builder
	mkdir := func(p string, perm uint32) {
		q := debugfsQuote(p)
		fmt.Fprintf(&b, "mkdir %s\nsif %s mode 0%o\nsif %s uid 0\nsif %s gid 0\n", q, q, 0o40000|perm, q, q)
	}
	for _, mp := range mountPoints() {
		if !rootNames[mp.name] {
			mkdir("/"+mp.name, mp.perm)
		}
	}
	dir, base := path.Split(boot.AgentPath)
	dir = strings.TrimSuffix(dir, "/")
	if !rootNames[strings.TrimPrefix(dir, "/")] {
		mkdir(dir, 0o755)
	}
	if old, err := statInImage(ctx, s.file, boot.AgentPath); err == nil {
		if old.typ == "directory" {
			return errdefs.Errorf(errdefs.ErrInvalid, "the ext4 image has a directory at %s, where the agent goes", boot.AgentPath)
		}
		fmt.Fprintf(&b, "cd %s\nrm %s\n", debugfsQuote(dir+"/."), debugfsQuote(base))
	}
	// The agent is linked into the temporary directory under a short
	// name, and debugfs runs there: its command line splits on spaces,
	// and the store's path may have some.
	if err := os.Symlink(s.agent, filepath.Join(s.tmp, agentCopy)); err != nil {
		return fmt.Errorf("link the agent binary: %w", err)
	}
	q := debugfsQuote(base)
	fmt.Fprintf(&b, "cd %s\nwrite %s %s\nsif %s mode 0100755\nsif %s uid 0\nsif %s gid 0\n",
		debugfsQuote(dir+"/."), agentCopy, q, q, q, q)
	if _, err := debugfs(ctx, s.tmp, s.file, true, b.String()); err != nil {
		return fmt.Errorf("write the agent into the ext4 image: %w", err)
	}
	return nil
}

// listRoot returns the names in the image's root directory.
func listRoot(ctx context.Context, file string) (map[string]bool, error) {
	out, err := debugfs(ctx, "", file, false, "ls -p /\n")
	if err != nil {
		return nil, fmt.Errorf("list the ext4 image's root: %w", err)
	}
	names := map[string]bool{}
	// Lines are "/INODE/MODE/UID/GID/NAME/SIZE/".
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, "/")
		if len(f) >= 7 && f[0] == "" {
			names[f[5]] = true
		}
	}
	return names, nil
}
