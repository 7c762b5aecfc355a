// Package untar unpacks a tar stream that is not trusted into a
// directory: no entry lands outside it or goes through a symlink, whether
// the stream made it or it was there; no device nodes or fifos; set-id
// bits dropped; owners not restored (everything is the unpacker's, or the
// Owner given); sizes bounded. The guest agent unpacks what the host
// sends with it, and the client what a guest sends.
package untar

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// resolveBeneath is how every path under the target directory is opened:
// never above it, never through a symlink, whether an earlier entry made
// it or it was there before, also while the tree changes meanwhile.
const resolveBeneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// Stats counts what an unpack wrote.
type Stats struct {
	Entries int
	Files   int
	Bytes   int64
}

// Options bound an unpack and say who owns what it writes.
type Options struct {
	// Owner owns what is unpacked, and the directory when it is made;
	// nil leaves it the unpacker's.
	Owner *Owner
	// MaxBytes bounds the bytes of the files, MaxEntries the entries;
	// 0 is no bound.
	MaxBytes   int64
	MaxEntries int
	// Top, when set, is the one top element the stream's entries may
	// have (a copy of one file or directory): an entry under another
	// name is refused. Each is unpacked under NewTop instead, when set.
	Top, NewTop string
}

// Into is where a copy of one file or directory called top goes for
// dest, as cp and docker cp do: into dest when it is a directory, else
// as dest (into its parent, named as its last element). A top of "."
// (the copy of a root's content) goes into dest, made if missing.
func Into(dest, top string) (string, Options) {
	if top == "." {
		return dest, Options{}
	}
	if fi, err := os.Stat(dest); err == nil && fi.IsDir() {
		return dest, Options{Top: top}
	}
	return filepath.Dir(dest), Options{Top: top, NewTop: filepath.Base(dest)}
}

// rename applies Top and NewTop to an entry's cleaned name.
func (o Options) rename(rel string) (string, error) {
	if o.Top == "" {
		return rel, nil
	}
	first, rest, _ := strings.Cut(rel, "/")
	if first != o.Top {
		return "", fmt.Errorf("it is not in %s, what the copy is of", o.Top)
	}
	if o.NewTop == "" {
		return rel, nil
	}
	return path.Join(o.NewTop, rest), nil
}

// ErrTooBig wraps the error of a stream past a bound.
var ErrTooBig = errors.New("the stream is larger than allowed")

// extractor writes tar entries under one directory.
type extractor struct {
	root int // the target directory
	// dirs get their mode and times last: entries written into a
	// directory change its times, and a read-only one would refuse them
	// to anyone but root.
	dirs []dirAttrs
	st   Stats
	opts Options
}

// Owner is a uid and gid.
type Owner struct{ UID, GID int }

// chown gives the entry base of the directory pfd to the extractor's
// owner, if it has one; a symlink itself, never its target.
func (x *extractor) chown(pfd int, base string) error {
	o := x.opts.Owner
	if o == nil {
		return nil
	}
	if err := unix.Fchownat(pfd, base, o.UID, o.GID, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set the owner: %w", err)
	}
	return nil
}

type dirAttrs struct {
	rel  string
	mode uint32
	hdr  *tar.Header
}

// Unpack writes the tar stream r into dir, which it makes if missing.
// Owners are not restored: everything belongs to opts.Owner (and dir too,
// when it is made), or with none, to the caller.
func Unpack(dir string, r io.Reader, opts Options) (Stats, error) {
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return Stats{}, fmt.Errorf("make %s: %w", dir, err)
		}
		if o := opts.Owner; o != nil {
			if err := os.Lchown(dir, o.UID, o.GID); err != nil {
				return Stats{}, fmt.Errorf("make %s: %w", dir, err)
			}
		}
	}
	root, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Stats{}, fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(root)
	x := &extractor{root: root, opts: opts}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return x.st, fmt.Errorf("read the tar stream: %w", err)
		}
		x.st.Entries++
		if max := opts.MaxEntries; max > 0 && x.st.Entries > max {
			return x.st, fmt.Errorf("more than %d entries: %w", max, ErrTooBig)
		}
		if max := opts.MaxBytes; max > 0 && hdr.Typeflag == tar.TypeReg && x.st.Bytes+hdr.Size > max {
			return x.st, fmt.Errorf("unpack %q: more than %d bytes: %w", hdr.Name, max, ErrTooBig)
		}
		if err := x.entry(hdr, tr); err != nil {
			return x.st, fmt.Errorf("unpack %q: %w", hdr.Name, err)
		}
	}
	return x.st, x.finishDirs()
}

func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	rel, err := entryPath(hdr.Name)
	if err == nil {
		rel, err = x.opts.rename(rel)
	}
	if err != nil {
		return err
	}
	if rel == "" && hdr.Typeflag != tar.TypeDir {
		return errors.New("only a directory may name the target directory")
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return x.dir(rel, hdr)
	case tar.TypeReg:
		return x.file(rel, hdr, r)
	case tar.TypeSymlink:
		return x.symlink(rel, hdr)
	case tar.TypeLink:
		return x.link(rel, hdr)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return fmt.Errorf("a %s: devices and fifos are not unpacked", typeName(hdr.Typeflag))
	}
	return fmt.Errorf("entry type %q is not supported", hdr.Typeflag)
}

func typeName(t byte) string {
	switch t {
	case tar.TypeChar:
		return "character device"
	case tar.TypeBlock:
		return "block device"
	}
	return "fifo"
}

// entryPath is an entry's name as a path relative to the target, "" for
// the target itself. Names that could leave it are refused, not mended:
// an archive that has them was not made from a directory.
func entryPath(name string) (string, error) {
	switch {
	case name == "":
		return "", errors.New("the entry has no name")
	case strings.IndexByte(name, 0) >= 0:
		return "", errors.New("the name contains a NUL byte")
	case strings.HasPrefix(name, "/"):
		return "", errors.New("absolute names are refused")
	case slices.Contains(strings.Split(name, "/"), ".."):
		return "", errors.New("names with .. are refused")
	}
	rel := path.Clean(name)
	if rel == "." {
		return "", nil
	}
	return rel, nil
}

// dir makes a directory; its mode and times are set at the end. The
// target itself keeps its own.
func (x *extractor) dir(rel string, hdr *tar.Header) error {
	if rel == "" {
		return nil
	}
	pfd, base, err := x.parent(rel)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	err = unix.Mkdirat(pfd, base, 0o755)
	if errors.Is(err, unix.EEXIST) {
		// A directory stays, with what it holds; anything else (a file,
		// a symlink) gives way.
		fd, oerr := openBeneath(pfd, base, unix.O_PATH|unix.O_DIRECTORY, 0)
		if oerr == nil {
			unix.Close(fd)
			err = nil
		} else if err = removeEntry(pfd, base); err == nil {
			err = unix.Mkdirat(pfd, base, 0o755)
		}
	}
	if err != nil {
		return fmt.Errorf("make the directory: %w", err)
	}
	x.dirs = append(x.dirs, dirAttrs{rel: rel, mode: entryMode(hdr), hdr: hdr})
	return nil
}

// file writes a regular file, replacing what was there: never through
// it, as writing into an existing symlink or hard link would.
func (x *extractor) file(rel string, hdr *tar.Header, r io.Reader) error {
	return x.replace(rel, func(pfd int, base string) error {
		fd, err := openBeneath(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return fmt.Errorf("create the file: %w", err)
		}
		// Before its mode: a chown clears the set-id bits.
		if err := x.chown(pfd, base); err != nil {
			unix.Close(fd)
			return err
		}
		n, err := writeFile(os.NewFile(uintptr(fd), rel), entryMode(hdr), r)
		x.st.Files++
		x.st.Bytes += n
		if err != nil {
			return err
		}
		return setTimes(pfd, base, hdr)
	})
}

// writeFile copies r into f, gives it its mode, and closes it.
func writeFile(f *os.File, mode uint32, r io.Reader) (int64, error) {
	n, err := io.Copy(f, r)
	if err != nil {
		f.Close()
		return n, fmt.Errorf("write the file: %w", err)
	}
	// After the write: a write may clear the set-id bits.
	if err := unix.Fchmod(int(f.Fd()), mode); err != nil {
		f.Close()
		return n, fmt.Errorf("set the file's mode: %w", err)
	}
	if err := f.Close(); err != nil {
		return n, fmt.Errorf("write the file: %w", err)
	}
	return n, nil
}

// symlink makes a symlink as the archive gives it, wherever it points:
// it is never followed here.
func (x *extractor) symlink(rel string, hdr *tar.Header) error {
	if hdr.Linkname == "" || strings.IndexByte(hdr.Linkname, 0) >= 0 {
		return errors.New("the symlink has no valid target")
	}
	return x.replace(rel, func(pfd int, base string) error {
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return fmt.Errorf("make the symlink: %w", err)
		}
		if err := x.chown(pfd, base); err != nil {
			return err
		}
		return setTimes(pfd, base, hdr)
	})
}

// link makes a hard link to an entry unpacked before, which must be
// under the target and be reached without a symlink too.
func (x *extractor) link(rel string, hdr *tar.Header) error {
	target, err := entryPath(hdr.Linkname)
	if err == nil {
		target, err = x.opts.rename(target)
	}
	if err == nil && target == "" {
		err = errors.New("it is the target directory")
	}
	if err != nil {
		return fmt.Errorf("hard link to %q: %w", hdr.Linkname, err)
	}
	tdir, tbase := path.Split(target)
	tfd, err := openBeneath(x.root, dirOrDot(tdir), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("hard link to %q: %w", hdr.Linkname, explainResolve(err))
	}
	defer unix.Close(tfd)
	return x.replace(rel, func(pfd int, base string) error {
		// Flags 0: a symlink as the last component is linked, not followed.
		if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
			return fmt.Errorf("hard link to %q: %w", hdr.Linkname, err)
		}
		return nil
	})
}

// replace removes what is at rel, a directory excepted, and has put make
// the entry in its place, in the directory rel goes into.
func (x *extractor) replace(rel string, put func(pfd int, base string) error) error {
	pfd, base, err := x.parent(rel)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if err := removeEntry(pfd, base); err != nil {
		return err
	}
	return put(pfd, base)
}

// finishDirs gives the directories their modes and times, now that
// nothing more is written into them.
func (x *extractor) finishDirs() error {
	for _, d := range x.dirs {
		fd, err := openBeneath(x.root, d.rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			return fmt.Errorf("unpack %q: %w", d.hdr.Name, explainResolve(err))
		}
		err = x.chown(fd, ".")
		if err == nil {
			err = unix.Fchmod(fd, d.mode)
		}
		if err == nil {
			err = setTimes(fd, ".", d.hdr)
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("unpack %q: set the directory's mode and times: %w", d.hdr.Name, err)
		}
	}
	return nil
}

// parent opens the directory rel goes into, made with its missing
// parents, and returns it with rel's last component.
func (x *extractor) parent(rel string) (fd int, base string, err error) {
	dir, base := path.Split(rel)
	dir = dirOrDot(dir)
	fd, err = openBeneath(x.root, dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if errors.Is(err, unix.ENOENT) {
		fd, err = x.mkdirAll(dir)
	}
	if err != nil {
		return -1, "", explainResolve(err)
	}
	return fd, base, nil
}

// mkdirAll opens dir under the target, making what is missing of it one
// component at a time, each opened beneath the last.
func (x *extractor) mkdirAll(dir string) (int, error) {
	cur, err := openBeneath(x.root, ".", unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return -1, err
	}
	for _, name := range strings.Split(dir, "/") {
		err := unix.Mkdirat(cur, name, 0o755)
		if err == nil {
			err = x.chown(cur, name)
		}
		if err != nil && !errors.Is(err, unix.EEXIST) {
			unix.Close(cur)
			return -1, fmt.Errorf("make the directory %s: %w", name, err)
		}
		next, err := openBeneath(cur, name, unix.O_PATH|unix.O_DIRECTORY, 0)
		unix.Close(cur)
		if err != nil {
			return -1, err
		}
		cur = next
	}
	return cur, nil
}

func dirOrDot(dir string) string {
	if dir = strings.TrimSuffix(dir, "/"); dir == "" {
		return "."
	}
	return dir
}

// openBeneath opens rel under dirfd with openat2, resolved by
// resolveBeneath.
func openBeneath(dirfd int, rel string, flags int, mode uint32) (int, error) {
	how := &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Mode: uint64(mode), Resolve: resolveBeneath}
	for range 64 {
		fd, err := unix.Openat2(dirfd, rel, how)
		// EAGAIN: a rename elsewhere raced the resolution; it may be
		// tried again.
		if err != unix.EAGAIN && err != unix.EINTR {
			return fd, err
		}
	}
	return -1, fmt.Errorf("open %s: the tree keeps changing: %w", rel, unix.EAGAIN)
}

// explainResolve says why a path under the target could not be opened.
func explainResolve(err error) error {
	switch {
	case errors.Is(err, unix.ELOOP):
		return fmt.Errorf("a symlink is in the way (nothing is written through one): %w", err)
	case errors.Is(err, unix.ENOTDIR):
		return fmt.Errorf("a file is in the way of a directory: %w", err)
	case errors.Is(err, unix.EXDEV):
		return fmt.Errorf("the path leaves the target directory: %w", err)
	}
	return err
}

// removeEntry removes what is at base, a directory excepted, so that an
// entry of any kind can take its place.
func removeEntry(pfd int, base string) error {
	err := unix.Unlinkat(pfd, base, 0)
	switch {
	case err == nil, errors.Is(err, unix.ENOENT):
		return nil
	case errors.Is(err, unix.EISDIR):
		return errors.New("a directory is in the way")
	}
	return fmt.Errorf("remove the old %s: %w", base, err)
}

// entryMode is an entry's permission bits with the sticky bit, never the
// set-id bits: everything unpacked is root's, and a user's set-uid file
// must not become a set-uid root one.
func entryMode(hdr *tar.Header) uint32 { return uint32(hdr.Mode) & 0o1777 }

// setTimes sets the entry's times on base in pfd, itself if a symlink.
func setTimes(pfd int, base string, hdr *tar.Header) error {
	if hdr.ModTime.IsZero() {
		return nil
	}
	mtime := timespec(hdr.ModTime)
	atime := mtime
	if !hdr.AccessTime.IsZero() {
		atime = timespec(hdr.AccessTime)
	}
	if err := unix.UtimesNanoAt(pfd, base, []unix.Timespec{atime, mtime}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set the times: %w", err)
	}
	return nil
}

func timespec(t time.Time) unix.Timespec { return unix.NsecToTimespec(t.UnixNano()) }
