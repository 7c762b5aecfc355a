package imagestore

import (
	"archive/tar"
	"bufio"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"banger/internal/errdefs"
)

// stageTarFile unpacks the tarball at file (plain, or compressed with
// gzip, xz, zstd or bzip2, told by its first bytes) into the staging
// tree.
func stageTarFile(ctx context.Context, st *stager, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("open the rootfs tarball: %w", err)
	}
	defer f.Close()
	r, closeDecomp, err := decompress(f)
	if err != nil {
		return fmt.Errorf("read the rootfs tarball %s: %w", file, err)
	}
	defer closeDecomp()
	return stageTar(ctx, st, r, "the rootfs tarball "+file)
}

// stageTar unpacks the tar stream r (what, such as "the rootfs tarball
// F", names it in errors) into the staging tree, with the owners, modes
// and modification times of its headers. Every source that is a tar
// stream goes through it (a tarball, an OCI image's flattened layers),
// so one set of rules holds for all.
//
// An archive is data from anywhere, so: a member with ".." in its name is
// refused (the import fails); a leading "/" is dropped, as GNU tar does;
// symlinks in the archive are followed only inside the tree, as the guest
// will see them, so a symlink to /etc followed by etc/passwd writes the
// image's /etc/passwd, never the host's; a member replaces a symlink at
// its own path instead of writing through it. Device nodes and fifos are
// left out with a note, as for a directory.
func stageTar(ctx context.Context, st *stager, r io.Reader, what string) error {
	tr := tar.NewReader(r)
	// Hard links met before their target, made at the end: mutate.Extract
	// writes the upper layers first, and a link in an upper layer to a
	// file of a lower one is valid.
	var later []hardLink
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			// Read past the end-of-archive marker: a producer that fails
			// after writing it (mutate.Extract closes its tar writer
			// before it reports a layer's error) fails here, not silently.
			if _, err := io.Copy(io.Discard, r); err != nil {
				return errdefs.Errorf(errdefs.ErrInvalid, "%s cannot be read: %v", what, err)
			}
			break
		}
		if err != nil {
			return errdefs.Errorf(errdefs.ErrInvalid, "%s cannot be read: %v", what, err)
		}
		name, err := memberName(h.Name)
		if err != nil {
			return err
		}
		a := attr{uid: h.Uid, gid: h.Gid, perm: uint32(h.Mode) & 0o7777}
		switch h.Typeflag {
		case tar.TypeDir:
			if name != "." {
				if err = st.mkdir(name, a); err == nil {
					err = st.keepTime(name, h.ModTime)
				}
			}
		case tar.TypeReg, tar.TypeGNUSparse:
			err = st.create(ctx, name, a, tr, h.ModTime)
		case tar.TypeSymlink:
			err = st.symlink(name, h.Linkname, a)
		case tar.TypeLink:
			var target string
			if target, err = memberName(h.Linkname); err == nil {
				if st.exists(target) {
					err = st.link(name, target)
				} else {
					later = append(later, hardLink{name, target})
				}
			}
		case tar.TypeChar, tar.TypeBlock:
			st.skip("device nodes", name)
		case tar.TypeFifo:
			st.skip("fifos", name)
		default:
			st.skip(fmt.Sprintf("tar entries of type %q", h.Typeflag), name)
		}
		if err == nil && (h.Typeflag == tar.TypeDir || h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeSymlink) {
			err = st.keepXattrs(name, h.Typeflag == tar.TypeDir, h.PAXRecords)
		}
		if err != nil {
			return fmt.Errorf("unpack %s: %w", h.Name, err)
		}
	}
	for _, l := range later {
		if err := st.link(l.name, l.target); err != nil {
			return fmt.Errorf("unpack %s: %w", l.name, err)
		}
	}
	return nil
}

// hardLink is a hard link of an archive: name, to target.
type hardLink struct{ name, target string }

// memberName turns an archive member's name into a tree path: "." for
// the root, no leading "/", and never a ".." element.
func memberName(name string) (string, error) {
	for _, elem := range strings.Split(name, "/") {
		if elem == ".." {
			return "", errdefs.Errorf(errdefs.ErrInvalid, "the root file system source has a member %q that points outside its root; refusing the whole archive", name)
		}
	}
	n := path.Clean(strings.TrimLeft(name, "/"))
	if !fs.ValidPath(n) {
		return "", errdefs.Errorf(errdefs.ErrInvalid, "the root file system source has a member with the bad name %q", name)
	}
	return n, nil
}

// Magic numbers of the compressions a tarball may have.
const (
	magicGzip  = "\x1f\x8b"
	magicXz    = "\xfd7zXZ\x00"
	magicZstd  = "\x28\xb5\x2f\xfd"
	magicBzip2 = "BZh"
)

// decompress returns r decompressed, told by its first bytes (anything
// else is read as a plain tarball), and a function that frees the
// decoder.
func decompress(r io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReaderSize(r, 1<<16)
	peek, err := br.Peek(6)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	head := string(peek)
	nop := func() {}
	switch {
	case strings.HasPrefix(head, magicGzip):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, func() { zr.Close() }, nil
	case strings.HasPrefix(head, magicXz):
		xr, err := xz.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("xz: %w", err)
		}
		return xr, nop, nil
	case strings.HasPrefix(head, magicZstd):
		// One goroutine: the tar reader consumes the stream in order.
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return zr, zr.Close, nil
	case strings.HasPrefix(head, magicBzip2):
		return bzip2.NewReader(br), nop, nil
	}
	return br, nop, nil
}
