// Package treetar writes files of a host directory tree as a tar stream
// for a guest: regular files, directories and symlinks, with their modes
// and times, owned by root. The workspace copy of `vm run` and the
// copies of an image build write their trees with it.
package treetar

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
)

// Writer writes entries of the tree under Root.
type Writer struct {
	tw   *tar.Writer
	root string
	dirs map[string]bool // directories written
	// Files and Bytes count the files and symlinks written, and the bytes
	// of the files.
	Files int
	Bytes int64
}

// New writes to out the entries of the tree under root.
func New(out io.Writer, root string) *Writer {
	return &Writer{tw: tar.NewWriter(out), root: root, dirs: map[string]bool{}}
}

// Close ends the stream.
func (w *Writer) Close() error { return w.tw.Close() }

// Add writes f, slash-separated and relative to the root, and the
// directories above it not written yet. A file gone (deleted meanwhile)
// is left out, as is what is neither a file, a directory nor a symlink
// (a socket, a device). A directory is written only with dirs set (in a
// git tree, a directory listed is a submodule, left out).
func (w *Writer) Add(f string, dirs bool) error {
	full := filepath.Join(w.root, filepath.FromSlash(f))
	fi, err := os.Lstat(full)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := w.Dir(path.Dir(f)); err != nil {
		return err
	}
	switch {
	case fi.IsDir():
		if dirs {
			return w.Dir(f)
		}
		return nil
	case fi.Mode()&fs.ModeSymlink != 0:
		err = w.symlink(full, f, fi)
	case fi.Mode().IsRegular():
		var n int64
		n, err = w.File(full, f)
		w.Bytes += n
	default:
		return nil
	}
	if err == nil {
		w.Files++
	}
	return err
}

// Dir writes the directory d (relative to the root) and those above it
// that are not written yet, top down, so they keep their modes in the
// guest.
func (w *Writer) Dir(d string) error {
	var todo []string
	for ; d != "." && d != "/" && d != "" && !w.dirs[d]; d = path.Dir(d) {
		todo = append(todo, d)
	}
	for i := len(todo) - 1; i >= 0; i-- {
		d := todo[i]
		w.dirs[d] = true
		fi, err := os.Lstat(filepath.Join(w.root, filepath.FromSlash(d)))
		if err != nil {
			return err
		}
		hdr := &tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: int64(fi.Mode().Perm()), ModTime: fi.ModTime()}
		if err := w.tw.WriteHeader(hdr); err != nil {
			return err
		}
	}
	return nil
}

func (w *Writer) symlink(full, name string, fi fs.FileInfo) error {
	link, err := os.Readlink(full)
	if err != nil {
		return err
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return err
	}
	return w.header(hdr, name)
}

// File writes the file full as the entry name, as it is when it is
// opened: the size of the open file is the entry's, and exactly that
// many bytes are written (zeros if it shrank meanwhile), so a file that
// changes during the copy cannot break the stream. Something that is no
// longer a regular file (a FIFO now) is not read.
func (w *Writer) File(full, name string) (int64, error) {
	f, err := os.Open(full)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("%s changed into something that is not a file during the copy", name)
	}
	hdr, err := tar.FileInfoHeader(fi, "")
	if err != nil {
		return 0, err
	}
	if err := w.header(hdr, name); err != nil {
		return 0, err
	}
	n, err := io.CopyN(w.tw, f, hdr.Size)
	if errors.Is(err, io.EOF) {
		_, err = io.CopyN(w.tw, zeros{}, hdr.Size-n)
	}
	return hdr.Size, err
}

func (w *Writer) header(hdr *tar.Header, name string) error {
	hdr.Name = name
	hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
	return w.tw.WriteHeader(hdr)
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// WriteTree writes target, and what it holds when it is a directory (a
// symlink is written as one, not followed), as a stream whose entries
// are named from target's last element ("/" gives its content, from
// "."), and closes it.
func WriteTree(out io.Writer, target string) (*Writer, error) {
	parent := filepath.Dir(target)
	tw := New(out, parent)
	err := filepath.WalkDir(target, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(parent, p)
		if err != nil {
			return err
		}
		return tw.Add(filepath.ToSlash(rel), true)
	})
	if err == nil {
		err = tw.Close()
	}
	return tw, err
}
