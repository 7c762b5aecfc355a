package client

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// A workspace is the files `vm run PATH` copies into the VM: a git work
// tree's tracked files (and, on request, its untracked files that are not
// ignored), or every file of a directory that is not in a git work tree.
type workspace struct {
	root  string   // the directory the files are relative to
	name  string   // the directory's name in the VM: /root/NAME
	sub   string   // PATH relative to root, where the command runs
	files []string // slash-separated, relative to root
	git   bool
}

// guestRoot is where workspaces go in the VM.
const guestRoot = "/root"

// dir is the workspace's directory in the VM.
func (w *workspace) dir() string { return path.Join(guestRoot, w.name) }

// workdir is where the command starts: PATH's place in the copy.
func (w *workspace) workdir() string { return path.Join(w.dir(), w.sub) }

// openWorkspace finds the files to copy for p.
func openWorkspace(p string, includeUntracked bool) (*workspace, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, err
	}
	// git names the top of the work tree with symlinks resolved: so must
	// we, for PATH's place in it.
	if abs, err = filepath.EvalSymlinks(abs); err != nil {
		return nil, usageError(fmt.Errorf("workspace: %w", err))
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, usageError(fmt.Errorf("workspace: %w", err))
	}
	if !fi.IsDir() {
		return nil, usageError(fmt.Errorf("workspace %s is not a directory", p))
	}
	top, err := gitOutput(abs, "rev-parse", "--show-toplevel")
	if err != nil {
		if errors.Is(err, errNotGit) || errors.Is(err, exec.ErrNotFound) {
			return walkWorkspace(abs)
		}
		return nil, err
	}
	w := &workspace{root: strings.TrimSpace(string(top)), git: true}
	w.name = filepath.Base(w.root)
	if w.sub, err = filepath.Rel(w.root, abs); err != nil {
		return nil, err
	}
	w.sub = filepath.ToSlash(w.sub)
	args := []string{"ls-files", "-z", "--cached"}
	if includeUntracked {
		args = append(args, "--others", "--exclude-standard")
	}
	out, err := gitOutput(w.root, args...)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, f := range strings.Split(string(out), "\x00") {
		if f == "" || seen[f] {
			continue
		}
		seen[f] = true
		w.files = append(w.files, f)
	}
	return w, nil
}

var errNotGit = errors.New("not in a git work tree")

// gitOutput runs git in dir. Outside a work tree it returns errNotGit;
// without git, an error that wraps exec.ErrNotFound (a plain directory is
// then copied whole).
func gitOutput(dir string, args ...string) ([]byte, error) {
	cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
	// Untranslated messages: "not a git repository" is matched below.
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, err
		}
		if strings.Contains(stderr.String(), "not a git repository") {
			return nil, errNotGit
		}
		return nil, fmt.Errorf("workspace: git %s: %v: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// walkWorkspace takes every file under dir.
func walkWorkspace(dir string) (*workspace, error) {
	w := &workspace{root: dir, name: filepath.Base(dir), sub: "."}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		// Directories too: an empty one is part of the tree.
		w.files = append(w.files, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	return w, nil
}

// copyStats says what a workspace's tar held.
type copyStats struct {
	files int
	bytes int64
	err   error // why the tar stream failed, if it did
}

// writeTar writes the workspace as a tar stream: regular files and
// symlinks, with their modes and times, owned by root. Files listed but
// gone (deleted, not yet committed) and submodules are left out.
func (w *workspace) writeTar(out io.Writer) (copyStats, error) {
	var st copyStats
	tw := tar.NewWriter(out)
	dirs := map[string]bool{}
	// PATH's place in the copy exists even when no copied file is in it
	// (an ignored build directory): the command starts there.
	if w.sub != "." {
		if err := writeParents(tw, w.root, w.sub+"/.", dirs); err != nil {
			return st, err
		}
	}
	for _, f := range w.files {
		full := filepath.Join(w.root, filepath.FromSlash(f))
		fi, err := os.Lstat(full)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return st, err
		}
		if err := writeParents(tw, w.root, f, dirs); err != nil {
			return st, err
		}
		switch {
		case fi.IsDir():
			// In a git tree, a directory listed is a submodule: left out.
			if !w.git {
				if err := writeParents(tw, w.root, f+"/.", dirs); err != nil {
					return st, err
				}
			}
			continue
		case fi.Mode()&fs.ModeSymlink != 0:
			err = writeSymlink(tw, full, f, fi)
		case fi.Mode().IsRegular():
			var n int64
			n, err = writeRegular(tw, full, f)
			st.bytes += n
		default:
			continue // a socket, a device
		}
		if err != nil {
			return st, err
		}
		st.files++
	}
	return st, tw.Close()
}

func writeSymlink(tw *tar.Writer, full, name string, fi fs.FileInfo) error {
	link, err := os.Readlink(full)
	if err != nil {
		return err
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return err
	}
	return writeHeader(tw, hdr, name)
}

// writeRegular writes one file as it is when it is opened: the size of
// the open file is the entry's, and exactly that many bytes are written
// (zeros if it shrank meanwhile), so a file that changes during the copy
// cannot break the stream. Something that is no longer a regular file
// (a FIFO now) is not read.
func writeRegular(tw *tar.Writer, full, name string) (int64, error) {
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
		return 0, fmt.Errorf("workspace: %s changed into something that is not a file during the copy", name)
	}
	hdr, err := tar.FileInfoHeader(fi, "")
	if err != nil {
		return 0, err
	}
	if err := writeHeader(tw, hdr, name); err != nil {
		return 0, err
	}
	n, err := io.CopyN(tw, f, hdr.Size)
	if errors.Is(err, io.EOF) {
		_, err = io.CopyN(tw, zeros{}, hdr.Size-n)
	}
	return hdr.Size, err
}

func writeHeader(tw *tar.Writer, hdr *tar.Header, name string) error {
	hdr.Name = name
	hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
	return tw.WriteHeader(hdr)
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// writeParents writes the directories above f that are not written yet,
// top down, so they keep their modes in the VM.
func writeParents(tw *tar.Writer, root, f string, done map[string]bool) error {
	var todo []string
	for d := path.Dir(f); d != "." && !done[d]; d = path.Dir(d) {
		todo = append(todo, d)
	}
	for i := len(todo) - 1; i >= 0; i-- {
		d := todo[i]
		done[d] = true
		fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(d)))
		if err != nil {
			return err
		}
		hdr := &tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: int64(fi.Mode().Perm()), ModTime: fi.ModTime()}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
	}
	return nil
}
