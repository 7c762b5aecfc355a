package imagestore

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"banger/internal/errdefs"
)

// stageDir copies the tree at src into the staging tree: directories,
// regular files (hard links kept as links), symlinks as they are, modes
// and owners. Device nodes, fifos and sockets are left out with a note:
// without root they cannot be made, and the agent mounts devtmpfs on
// /dev. Extended attributes (file capabilities) are not copied.
//
// Files the daemon's user owns become root's in the image, like a
// rootless container's: a tree built by a user is meant as a root's
// tree. Other owners are kept, so a tree made by root (debootstrap) gives
// the same image whoever imports it.
func stageDir(ctx context.Context, st *stager, src string) error {
	// WalkDir does not follow a symlink, not even the one it starts at.
	src, err := filepath.EvalSymlinks(src)
	if err != nil {
		return fmt.Errorf("read the rootfs directory: %w", err)
	}
	euid, egid := os.Geteuid(), os.Getegid()
	owner := func(sys *syscall.Stat_t) (int, int) {
		uid, gid := int(sys.Uid), int(sys.Gid)
		if uid == euid {
			uid = 0
		}
		if gid == egid {
			gid = 0
		}
		return uid, gid
	}
	type inode struct{ dev, ino uint64 }
	seen := map[inode]string{} // files with several links, by inode
	n := 0
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("read the rootfs directory: %w", err)
		}
		if n++; n%256 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		rel, err := filepath.Rel(src, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		fi, err := d.Info()
		if err != nil {
			return fmt.Errorf("read the rootfs directory: %w", err)
		}
		sys, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("stat %s: no Unix attributes", p)
		}
		uid, gid := owner(sys)
		a := attr{uid: uid, gid: gid, perm: uint32(sys.Mode) & 0o7777}
		switch fi.Mode().Type() {
		case fs.ModeDir:
			return st.mkdir(rel, a)
		case fs.ModeSymlink:
			target, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("read symlink %s: %w", p, err)
			}
			return st.symlink(rel, target, a)
		case 0: // regular
			key := inode{dev: uint64(sys.Dev), ino: sys.Ino}
			if sys.Nlink > 1 {
				if first, ok := seen[key]; ok {
					return st.link(rel, first)
				}
				seen[key] = rel
			}
			f, err := os.Open(p)
			if err != nil {
				return fmt.Errorf("copy %s: %w", p, err)
			}
			defer f.Close()
			return st.create(ctx, rel, a, f, fi.ModTime())
		default:
			st.skip(kindName(fi.Mode().Type()), rel)
			return nil
		}
	})
}

// kindName names a special file's kind for a note.
func kindName(t fs.FileMode) string {
	switch {
	case t&fs.ModeDevice != 0:
		return "device nodes"
	case t&fs.ModeNamedPipe != 0:
		return "fifos"
	case t&fs.ModeSocket != 0:
		return "sockets"
	}
	return "special files"
}

// checkRootfsDir refuses a source directory that contains the store
// itself: copying it would copy the image being built into itself.
func checkRootfsDir(src, store string) error {
	abs, err := filepath.EvalSymlinks(src)
	if err != nil {
		return errdefs.Errorf(errdefs.ErrInvalid, "rootfs directory %s cannot be read: %v", src, err)
	}
	if abs, err = filepath.Abs(abs); err != nil {
		return err
	}
	if real, err := filepath.EvalSymlinks(store); err == nil {
		store = real
	}
	if rel, err := filepath.Rel(abs, store); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
		return errdefs.Errorf(errdefs.ErrInvalid, "the rootfs directory %s contains banger's image store %s; give a directory with just the guest's root filesystem", src, store)
	}
	return nil
}
