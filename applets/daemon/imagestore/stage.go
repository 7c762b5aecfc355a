package imagestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"banger/applets/agent/boot"
	"banger/internal/errdefs"
)

// attr is what an entry should be owned by, and its permission bits
// (07777), in the image. The staging tree cannot always say it: the
// daemon is not root, so it cannot chown, and it keeps its own read and
// write bits on everything so mkfs.ext4 can read the tree. Whatever
// differs is set afterwards with debugfs (see fixups).
type attr struct {
	uid, gid int
	perm     uint32
}

// rootAttr is the owner of entries the store makes itself.
func rootAttr(perm uint32) attr { return attr{uid: 0, gid: 0, perm: perm} }

// maxLinks bounds symlink resolution: the kernel's limit for one path, so
// what resolves here resolves in the guest.
const maxLinks = 40

// stager builds the tree an ext4 image is made from. Paths given to its
// methods are relative to the image root, slash-separated and clean;
// symlinks met on the way are followed as the guest would see them (an
// absolute target starts at the image root, ".." stops there), so
// nothing is ever written outside the tree, whatever its symlinks say.
type stager struct {
	dir  string   // the staging directory
	root *os.Root // dir, opened so no operation can leave it
	// want is each entry's owner and mode in the image, by path; entries
	// without one (parents made on the way) are root's.
	want map[string]attr
	// skipped lists, by kind, a few of the entries left out because
	// mkfs.ext4 -d cannot make them without root.
	skipped map[string][]string
	notes   []string
	// times are directories' modification times, by path, set once the
	// tree is complete: writing a directory's entries changes its own.
	times map[string]time.Time
	// xattrs are entries' extended attributes, by path and name, set in
	// the image with debugfs (applyXattrs).
	xattrs map[string]map[string]string
}

func newStager(dir string) (*stager, error) {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("make staging directory: %w", err)
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open staging directory: %w", err)
	}
	return &stager{dir: dir, root: r, want: map[string]attr{}, skipped: map[string][]string{},
		times: map[string]time.Time{}, xattrs: map[string]map[string]string{}}, nil
}

func (st *stager) close() { st.root.Close() }

// resolve returns where name is in the tree: every symlink among its
// parents is followed inside the tree, and the last element too when
// followLast is set. Missing elements are kept as they are (to be made).
func (st *stager) resolve(name string, followLast bool) (string, error) {
	todo := splitPath(name)
	done := ""
	links := 0
	for len(todo) > 0 {
		elem := todo[0]
		todo = todo[1:]
		switch elem {
		case "", ".":
			continue
		case "..":
			done = parentOf(done)
			continue
		}
		next := path.Join(done, elem)
		if len(todo) == 0 && !followLast {
			done = next
			break
		}
		fi, err := st.root.Lstat(next)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			done = next // missing, or not a link: take it as it is
			continue
		}
		if links++; links > maxLinks {
			return "", fmt.Errorf("resolve %s: too many levels of symbolic links", name)
		}
		target, err := st.root.Readlink(next)
		if err != nil {
			return "", fmt.Errorf("resolve %s: %w", name, err)
		}
		if strings.HasPrefix(target, "/") {
			done = ""
		}
		todo = append(splitPath(target), todo...)
	}
	return done, nil
}

func splitPath(p string) []string { return strings.Split(p, "/") }

// parentOf is path.Dir for tree paths, stopping at the root ("").
func parentOf(p string) string {
	if d := path.Dir(p); d != "." {
		return d
	}
	return ""
}

// place makes way for a new entry at p (resolved): it makes the missing
// parents, and removes what is at p unless that is a directory, which is
// an error (an archive would need to replace a tree by a file).
func (st *stager) place(p string) error {
	if dir := parentOf(p); dir != "" {
		if err := st.root.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("make parents of /%s: %w", p, err)
		}
	}
	fi, err := st.root.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return errdefs.Errorf(errdefs.ErrInvalid, "/%s is a directory, and the root filesystem source puts a file there", p)
	}
	return st.root.Remove(p)
}

// mkdir makes the directory name (or keeps the one there) with attr a.
func (st *stager) mkdir(name string, a attr) error {
	p, err := st.resolve(name, true)
	if err != nil {
		return err
	}
	if p == "" {
		return nil // the image root: mkfs.ext4 makes it, root's, 0755
	}
	fi, err := st.root.Lstat(p)
	if err != nil || !fi.IsDir() {
		if err := st.place(p); err != nil {
			return err
		}
		if err := st.root.Mkdir(p, 0o700); err != nil {
			return fmt.Errorf("make /%s: %w", p, err)
		}
	}
	st.want[p] = a
	return st.root.Chmod(p, fileMode(a.perm|0o700))
}

// create writes a regular file at name with attr a, its content read from
// r, and its modification time mtime (unless zero). Runs of zeros become
// holes, which mkfs.ext4 -d keeps: a sparse file in a tarball costs no
// disk for its declared size.
func (st *stager) create(ctx context.Context, name string, a attr, r io.Reader, mtime time.Time) error {
	p, err := st.resolve(name, false)
	if err != nil {
		return err
	}
	if p == "" {
		return errdefs.Errorf(errdefs.ErrInvalid, "the root filesystem source puts a file at /")
	}
	if err := st.place(p); err != nil {
		return err
	}
	// O_EXCL: place removed whatever was there, so this never follows a
	// symlink the source left at p.
	f, err := st.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create /%s: %w", p, err)
	}
	_, err = copySparseTo(ctx, f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write /%s: %w", p, err)
	}
	st.want[p] = a
	if err := st.root.Chmod(p, fileMode(a.perm|0o600)); err != nil {
		return err
	}
	if !mtime.IsZero() {
		return st.root.Chtimes(p, mtime, mtime)
	}
	return nil
}

// symlink makes a symlink at name pointing to target (kept as it is: a
// symlink is data in the image, resolved by the guest).
func (st *stager) symlink(name, target string, a attr) error {
	p, err := st.resolve(name, false)
	if err != nil {
		return err
	}
	if p == "" {
		return errdefs.Errorf(errdefs.ErrInvalid, "the root filesystem source puts a symlink at /")
	}
	if err := st.place(p); err != nil {
		return err
	}
	if err := st.root.Symlink(target, p); err != nil {
		return fmt.Errorf("make symlink /%s: %w", p, err)
	}
	st.want[p] = attr{uid: a.uid, gid: a.gid, perm: 0o777}
	return nil
}

// keepTime records the modification time the directory name should
// have in the image (none when mtime is zero).
func (st *stager) keepTime(name string, mtime time.Time) error {
	p, err := st.resolve(name, true)
	if err != nil || p == "" || mtime.IsZero() {
		return err
	}
	st.times[p] = mtime
	return nil
}

// setTimes gives the directories the modification times kept for them;
// mkfs.ext4 -d copies them into the image.
func (st *stager) setTimes() error {
	for p, t := range st.times {
		if err := st.root.Chtimes(p, t, t); err != nil {
			return fmt.Errorf("set the time of /%s: %w", p, err)
		}
	}
	return nil
}

// exists reports whether name is in the tree (its parents' symlinks
// followed, not its own).
func (st *stager) exists(name string) bool {
	p, err := st.resolve(name, false)
	if err != nil {
		return false
	}
	_, err = st.root.Lstat(p)
	return err == nil
}

// link makes name a hard link to the existing entry target.
func (st *stager) link(name, target string) error {
	t, err := st.resolve(target, false)
	if err != nil {
		return err
	}
	fi, err := st.root.Lstat(t)
	if err != nil || fi.IsDir() {
		return errdefs.Errorf(errdefs.ErrInvalid, "hard link /%s points to /%s, which is not a file in the source", name, target)
	}
	p, err := st.resolve(name, false)
	if err != nil {
		return err
	}
	if p == t {
		return nil
	}
	if err := st.place(p); err != nil {
		return err
	}
	if err := st.root.Link(t, p); err != nil {
		return fmt.Errorf("link /%s to /%s: %w", p, t, err)
	}
	if a, ok := st.want[t]; ok {
		st.want[p] = a
	}
	return nil
}

// skip records an entry left out of the image.
func (st *stager) skip(kind, name string) {
	const examples = 3
	ex := st.skipped[kind]
	if len(ex) < examples {
		ex = append(ex, "/"+name)
	} else if len(ex) == examples {
		ex = append(ex, "…")
	}
	st.skipped[kind] = ex
}

// skipNotes turns the skipped entries into notes for the manifest.
func (st *stager) skipNotes() []string {
	var out []string
	for kind, ex := range st.skipped {
		out = append(out, fmt.Sprintf("left out %s (%s)", kind, strings.Join(ex, ", ")))
	}
	sort.Strings(out)
	return out
}

// Directories the agent needs to exist in every root filesystem, with
// their modes: it mounts /proc, /sys, /dev, /run and /tmp, and root's home
// and /etc are where it writes the guest's identity.
func mountPoints() []struct {
	name string
	perm uint32
} {
	return []struct {
		name string
		perm uint32
	}{
		{"proc", 0o555}, {"sys", 0o555}, {"dev", 0o755}, {"run", 0o755},
		{"tmp", 0o1777}, {"root", 0o700}, {"etc", 0o755},
	}
}

// addGuestParts puts the agent at boot.AgentPath and makes the mount points
// the tree lacks (anything already there, even a symlink, is kept).
func (st *stager) addGuestParts(ctx context.Context, agent string) error {
	for _, mp := range mountPoints() {
		if _, err := st.root.Lstat(mp.name); errors.Is(err, os.ErrNotExist) {
			if err := st.mkdir(mp.name, rootAttr(mp.perm)); err != nil {
				return err
			}
		}
	}
	sbin := path.Dir(strings.TrimPrefix(boot.AgentPath, "/"))
	p, err := st.resolve(sbin, true)
	if err != nil {
		return err
	}
	if p != "" { // "": /sbin links to the root, which is there
		fi, err := st.root.Lstat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if err := st.mkdir(p, rootAttr(0o755)); err != nil {
				return err
			}
		case err != nil:
			return fmt.Errorf("look at /%s: %w", p, err)
		case !fi.IsDir():
			return errdefs.Errorf(errdefs.ErrInvalid, "/%s is not a directory in the root filesystem; the agent goes in %s", sbin, path.Dir(boot.AgentPath))
		}
	}
	f, err := os.Open(agent)
	if err != nil {
		return fmt.Errorf("open the agent binary: %w", err)
	}
	defer f.Close()
	return st.create(ctx, strings.TrimPrefix(boot.AgentPath, "/"), rootAttr(0o755), f, time.Time{})
}

// fileMode turns Unix permission bits (07777) into an os.FileMode.
func fileMode(perm uint32) os.FileMode {
	m := os.FileMode(perm & 0o777)
	if perm&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if perm&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if perm&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}
