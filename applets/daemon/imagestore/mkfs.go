package imagestore

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"banger/applets/agent/boot"
	"banger/internal/errdefs"
)

const (
	mib       = 1 << 20
	blockSize = 4096
	// inodeRatio is bytes per inode, mke2fs's default for ext4.
	inodeRatio = 16384
	// headroomMiB is the free space a root filesystem gets on top of its
	// content when the import gives no size: what a VM can write before
	// it needs a bigger --disk-size. It costs no host disk: the image is
	// sparse and each VM's writes go to its own overlay.
	headroomMiB = 1024
	// maxContentMiB bounds the data of an image's root file system: a
	// VM's disk, whose largest size is api.MaxDiskMiB, must hold it.
	maxContentMiB = 512 << 10
)

// survey is what mkfs.ext4 needs to know of a staging tree, and what it
// cannot take from it.
type survey struct {
	entries int64
	bytes   int64 // space the entries take in 4 KiB blocks (their data, not holes)
	fixups  []fixup
	// unfixable are entries whose owner or mode cannot be set because
	// debugfs cannot name them (a newline in the name).
	unfixable []string
}

// fixup is an entry whose owner or mode in the staging tree is not the
// one it must have in the image.
type fixup struct {
	path string // absolute in the image
	mode uint32 // full i_mode: type and permission bits
	uid  int
	gid  int
}

// survey walks the staging tree, sizing it and listing the entries whose
// owner or mode debugfs must set (the staging tree has the daemon's user
// as owner, and owner-readable modes).
func (st *stager) survey() (survey, error) {
	var sv survey
	type inode struct{ dev, ino uint64 }
	counted := map[inode]bool{}
	err := filepath.WalkDir(st.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(st.dir, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		sys, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("stat %s: no Unix attributes", p)
		}
		key := inode{uint64(sys.Dev), sys.Ino}
		if counted[key] {
			return nil
		}
		counted[key] = true
		sv.entries++
		switch {
		case fi.Mode().IsRegular():
			// The blocks it takes, not its apparent size: staging keeps
			// holes, and so does mkfs -d, and a sparse file's apparent
			// size is whatever the tar says (a few KiB of tar can claim
			// tens of GiB).
			sv.bytes += roundUp(sys.Blocks*512, blockSize)
		case fi.IsDir():
			sv.bytes += max(blockSize, roundUp(fi.Size(), blockSize))
		case fi.Size() >= 60: // a symlink too long to live in its inode
			sv.bytes += blockSize
		}
		perm := uint32(sys.Mode) & 0o7777
		want, ok := st.want[rel]
		if !ok {
			want = rootAttr(perm)
		}
		isLink := fi.Mode()&fs.ModeSymlink != 0
		if int(sys.Uid) == want.uid && int(sys.Gid) == want.gid && (isLink || perm == want.perm) {
			return nil
		}
		if strings.ContainsAny(rel, "\n\x00") {
			sv.unfixable = append(sv.unfixable, strconv.Quote("/"+rel))
			return nil
		}
		sv.fixups = append(sv.fixups, fixup{path: "/" + rel, mode: uint32(sys.Mode)&syscall.S_IFMT | want.perm, uid: want.uid, gid: want.gid})
		return nil
	})
	if err != nil {
		return sv, fmt.Errorf("survey the staging tree: %w", err)
	}
	return sv, nil
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// defaultSizeMiB is the size of a root filesystem for content of the given
// bytes: the content, a quarter more for ext4's own blocks, the headroom,
// rounded up to 64 MiB.
func defaultSizeMiB(content int64) int {
	c := roundUp(content, mib) / mib
	return int(roundUp(c+c/4+headroomMiB, 64))
}

// mkfsSpec is one run of mkfs.ext4.
type mkfsSpec struct {
	staging string
	file    string
	sizeMiB int
	entries int64
	// userSize says the size came from the caller, so a tree that does
	// not fit is their error to fix.
	userSize bool
}

// mkfs writes the ext4 image file from the staging tree.
//
// The journal is kept: a VM's writes land on its qcow2 overlay, which
// lives on across `vm stop`, `vm kill` and `vm start`, and without a
// journal a killed guest's filesystem comes back needing fsck. It costs
// no disk (its zeros become holes) and a few writes per commit.
//
// Other choices: 4 KiB blocks whatever the size (mke2fs.conf would pick
// 1 KiB for a small "small" filesystem); no blocks reserved for root,
// which is everyone in a guest; the root directory root's, not the
// daemon user's; inode tables written now (lazy_itable_init=0), once in
// the shared image, instead of by every guest's kernel into its overlay.
func mkfs(ctx context.Context, s mkfsSpec) error {
	args := []string{"-q", "-F", "-t", "ext4", "-L", RootfsLabel,
		"-b", strconv.Itoa(blockSize), "-I", "256", "-i", strconv.Itoa(inodeRatio), "-m", "0",
		"-E", "root_owner=0:0,lazy_itable_init=0", "-d", s.staging}
	// Many small files can need more inodes than the ratio gives.
	if need := s.entries + s.entries/2 + 1024; int64(s.sizeMiB)*mib/inodeRatio < need {
		args = append(args, "-N", strconv.FormatInt(need, 10))
	}
	args = append(args, s.file, strconv.Itoa(s.sizeMiB)+"M")
	res, err := run(ctx, toolRun{name: "mkfs.ext4", args: args})
	if err != nil {
		out := res.stderr + res.stdout
		if s.userSize && (strings.Contains(out, "Could not allocate") || strings.Contains(out, "No space left")) {
			return errdefs.Errorf(errdefs.ErrInvalid, "the root filesystem does not fit in %d MiB; give a larger size, or none to have one computed", s.sizeMiB)
		}
		return fmt.Errorf("make the ext4 root filesystem: %w", err)
	}
	return nil
}

// applyFixups sets owners and modes in the image file with debugfs.
func applyFixups(ctx context.Context, file string, fx []fixup) error {
	if len(fx) == 0 {
		return nil
	}
	var b strings.Builder
	for _, f := range fx {
		q := debugfsQuote(f.path)
		fmt.Fprintf(&b, "sif %s uid %d\nsif %s gid %d\nsif %s mode 0%o\n", q, f.uid, q, f.gid, q, f.mode)
	}
	if _, err := debugfs(ctx, "", file, true, b.String()); err != nil {
		return fmt.Errorf("set owners and modes in the root filesystem: %w", err)
	}
	return nil
}

// debugfsQuote quotes a path for a debugfs command line: in double quotes,
// a double quote doubled. Paths start with "/", so none reads as the
// "<inode>" form.
func debugfsQuote(p string) string {
	return `"` + strings.ReplaceAll(p, `"`, `""`) + `"`
}

// debugfs runs a debugfs script on an image file from the directory dir.
// debugfs exits 0 whatever its commands did, so anything it prints on
// stderr besides its banner is an error.
func debugfs(ctx context.Context, dir, file string, write bool, script string) (string, error) {
	args := []string{"-f", "-"}
	if write {
		args = append([]string{"-w"}, args...)
	}
	res, err := run(ctx, toolRun{name: "debugfs", args: append(args, file), dir: dir, stdin: strings.NewReader(script)})
	if err != nil {
		return "", err
	}
	var problems []string
	for _, line := range strings.Split(strings.TrimSpace(res.stderr), "\n") {
		if line != "" && !strings.HasPrefix(line, "debugfs ") {
			problems = append(problems, line)
		}
	}
	if len(problems) > 0 {
		return res.stdout, fmt.Errorf("debugfs: %s", lastLines(strings.Join(problems, "\n"), 3))
	}
	return res.stdout, nil
}

// inodeStat is what debugfs's stat says about an inode.
type inodeStat struct {
	typ  string // "regular", "directory", "symlink", ...
	perm uint32
	uid  int
	gid  int
	size int64
}

// statInImage runs debugfs's stat on a path in the image file.
func statInImage(ctx context.Context, file, p string) (inodeStat, error) {
	out, err := debugfs(ctx, "", file, false, "stat "+debugfsQuote(p)+"\n")
	if err != nil {
		return inodeStat{}, err
	}
	var st inodeStat
	fields := strings.Fields(out)
	seen := map[string]bool{} // the first of each: "Size:" comes again as a fragment's
	for i := 0; i+1 < len(fields); i++ {
		v := fields[i+1]
		if seen[fields[i]] {
			continue
		}
		seen[fields[i]] = true
		switch fields[i] {
		case "Type:":
			st.typ = v
		case "Mode:":
			m, _ := strconv.ParseUint(v, 8, 32)
			st.perm = uint32(m)
		case "User:":
			st.uid, _ = strconv.Atoi(v)
		case "Group:":
			st.gid, _ = strconv.Atoi(v)
		case "Size:":
			st.size, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if st.typ == "" {
		return st, fmt.Errorf("debugfs stat %s: no inode in its answer", p)
	}
	return st, nil
}

// checkImage checks a finished root filesystem: the agent is where it
// must be, a root-owned 0755 regular file of the agent's size, and
// e2fsck finds nothing wrong.
func checkImage(ctx context.Context, file string, agentSize int64) error {
	st, err := statInImage(ctx, file, boot.AgentPath)
	if err != nil {
		return fmt.Errorf("check the agent in the root filesystem: %w", err)
	}
	if st.typ != "regular" || st.perm != 0o755 || st.uid != 0 || st.gid != 0 || st.size != agentSize {
		return fmt.Errorf("check the agent in the root filesystem: %s is a %s, mode %04o, owner %d:%d, %d bytes; want a regular file, 0755, 0:0, %d bytes",
			boot.AgentPath, st.typ, st.perm, st.uid, st.gid, st.size, agentSize)
	}
	if _, err := run(ctx, toolRun{name: "e2fsck", args: []string{"-f", "-n", file}}); err != nil {
		return fmt.Errorf("check the root filesystem: %w", err)
	}
	return nil
}
