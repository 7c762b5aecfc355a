package imagestore

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"banger/internal/errdefs"
)

// unpackLayout unpacks the oci-archive file (a tar of an OCI layout) into
// a scratch directory beside the staging tree, inside the import's
// temporary directory, so a failed or crashed import removes it with the
// rest. A layout is files and directories: any other entry, or a name
// that leaves the directory, refuses the archive.
func unpackLayout(ctx context.Context, file string, st *stager) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", missing("oci-archive", file, "give a tar of an OCI layout", err)
	}
	defer f.Close()
	dir, err := os.MkdirTemp(filepath.Dir(st.dir), "oci-archive-")
	if err != nil {
		return "", err
	}
	if err := unpackFiles(ctx, tar.NewReader(f), dir); err != nil {
		removeScratch(dir)
		return "", errdefs.Errorf(errdefs.ErrInvalid, "the oci-archive %s cannot be unpacked: %v", file, err)
	}
	return dir, nil
}

// unpackFiles writes the directories and regular files of tr under dir.
func unpackFiles(ctx context.Context, tr *tar.Reader, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name, err := memberName(h.Name)
		if err != nil {
			return err
		}
		switch {
		case name == ".":
		case h.Typeflag == tar.TypeDir:
			err = root.MkdirAll(name, 0o700)
		case h.Typeflag == tar.TypeReg:
			err = writeMember(root, name, tr)
		default:
			err = fmt.Errorf("%s is a tar entry of type %q; an OCI layout holds only files and directories", h.Name, h.Typeflag)
		}
		if err != nil {
			return err
		}
	}
}

// writeMember writes one file of an archive, its parents made first.
func writeMember(root *os.Root, name string, r io.Reader) error {
	if dir := filepath.Dir(name); dir != "." {
		if err := root.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// removeScratch removes a scratch directory; what is left, the import's
// temporary directory removes.
func removeScratch(dir string) { os.RemoveAll(dir) }
