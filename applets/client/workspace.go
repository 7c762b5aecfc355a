package client

import (
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

	"banger/internal/treetar"
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

// guestRoot is where workspaces go in the VM: the home of the user the
// command runs as (root's, /root, unless the image or --user says
// another), resolved by the daemon or the guest.
const guestRoot = "~"

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
	tw := treetar.New(out, w.root)
	// PATH's place in the copy exists even when no copied file is in it
	// (an ignored build directory): the command starts there.
	err := tw.Dir(w.sub)
	for _, f := range w.files {
		if err != nil {
			break
		}
		err = tw.Add(f, !w.git)
	}
	st := copyStats{files: tw.Files, bytes: tw.Bytes}
	if err != nil {
		return st, fmt.Errorf("workspace: %w", err)
	}
	return st, tw.Close()
}
