// Package imagestore keeps banger's VM images on disk. An image is a
// kernel (an uncompressed vmlinux), an optional initrd, a read-only ext4
// root filesystem with the guest agent in it as /sbin/banger-agent, and a
// manifest that records where the parts came from and their digests.
// The store imports images from a directory, a tarball or an ext4 file,
// assembles the default image from what the host already has (its kernel
// and busybox-static), and makes each VM's copy-on-write qcow2 overlay.
//
// Root filesystems are built without root and without mounting:
// mkfs.ext4 -d writes them from a staging directory, and debugfs edits
// them (owners, modes, the agent). An image appears under its name only
// once complete: it is built in a temporary directory inside the store and
// renamed into place, so a crash never leaves half an image under a real
// name, and leftovers are removed when the store is opened.
//
// It must not know about VMs, the database or the wire: callers say which
// VMs use an image and how to prepare a kernel, and errors carry rpc codes
// the daemon can return as they are. It never downloads anything.
package imagestore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/layout"
)

// The store's own names, beside and inside its images (an image's files
// are layout's Image*): every name the store writes is there or here, so
// `ls` can be read against them.
const (
	// storeLockFile is held shared by every import and delete while it
	// has files under tmpDir, and exclusively by Open while it empties
	// tmpDir, so a second opener never removes a live build.
	storeLockFile = ".lock"
	// locksDir holds one lock file per image name, held while that name
	// is imported, so two imports of one name do not both build it.
	locksDir = ".locks"
	// tmpDir holds imports in progress and images being deleted. It is on
	// the same filesystem as the images, so renames are atomic.
	tmpDir = ".tmp"
	// stagingDir, inside an import's temporary directory, is the tree
	// mkfs.ext4 -d reads; it is removed before the image is published.
	stagingDir = "root"
	// agentCopy, inside an import's temporary directory, is the agent as
	// debugfs writes it: a short relative name, whatever the store's path.
	agentCopy = "agent"
	// xattrsDir, inside an import's temporary directory, holds the values
	// of the extended attributes debugfs sets, one file each.
	xattrsDir = "xattrs"
)

// In the image.
const (
	// RootfsLabel is the ext4 label of images built here.
	RootfsLabel = "banger-root"
)

// Options are what the store needs from its caller.
type Options struct {
	// PrepareKernel writes the kernel to boot, made from the kernel file
	// src, to dst. The daemon passes the bzImage-to-vmlinux extraction;
	// nil copies src as it is.
	PrepareKernel func(ctx context.Context, src, dst string) error
	// BuildInitrd writes an initrd for the kernel file kernelPath (the
	// kernel as the caller gave it, so its release and modules can be
	// found) to dst, when an import gives no initrd. It returns false
	// when that kernel needs none (its drivers are built in). Nil: images
	// without a given initrd have none.
	BuildInitrd func(ctx context.Context, kernelPath, dst string) (bool, error)
	// Built (may be nil) is called when a build ends, whether it
	// succeeded or not: the daemon gives back the memory it took.
	Built func()
}

// Store is a directory of images. Its methods are safe for concurrent use,
// also by several processes on one directory.
type Store struct {
	root string // absolute
	opts Options
}

// Image is a stored image: its manifest and the absolute paths of its
// parts.
type Image struct {
	Manifest
	Dir        string `json:"dir"`
	KernelPath string `json:"kernel_path"`
	InitrdPath string `json:"initrd_path,omitempty"` // "" when the image has none
	RootfsPath string `json:"rootfs_path"`
}

// Open opens the store in root, creating it if needed, and removes what
// interrupted imports and deletes left behind.
func Open(ctx context.Context, root string, opts Options) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("open image store %s: %w", root, err)
	}
	s := &Store{root: abs, opts: opts}
	for _, dir := range []string{abs, s.path(locksDir), s.path(tmpDir)} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("open image store: %w", err)
		}
	}
	if err := s.removeLeftovers(); err != nil {
		return nil, fmt.Errorf("open image store %s: %w", abs, err)
	}
	return s, nil
}

// Root returns the store's directory.
func (s *Store) Root() string { return s.root }

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.root}, elem...)...)
}

// removeLeftovers empties tmpDir unless an import or delete, here or in
// another process, is running: their temporary files are live.
func (s *Store) removeLeftovers() error {
	l, err := tryLock(s.path(storeLockFile), unix.LOCK_EX)
	if errors.Is(err, errLocked) {
		return nil // someone is building; a later Open cleans up
	}
	if err != nil {
		return err
	}
	defer l.unlock()
	entries, err := os.ReadDir(s.path(tmpDir))
	if err != nil {
		return fmt.Errorf("list leftovers: %w", err)
	}
	for _, e := range entries {
		if err := removeUnmounted(s.path(tmpDir, e.Name())); err != nil {
			return fmt.Errorf("remove leftover %s: %w", e.Name(), err)
		}
	}
	return s.removeUnusedParts()
}

// List returns every image by name. An image whose manifest cannot be
// read is listed with its Problem set, not hidden, so it can be seen and
// deleted.
func (s *Store) List(ctx context.Context) ([]Image, error) {
	entries, err := os.ReadDir(s.root)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []Image
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		im, err := s.load(e.Name())
		if err != nil {
			im = s.image(Manifest{Name: e.Name(), Problem: err.Error()})
		}
		out = append(out, im)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Get returns the image called name: not_found when there is none.
func (s *Store) Get(ctx context.Context, name string) (Image, error) {
	if err := api.ValidName("image", name); err != nil {
		return Image{}, err
	}
	if _, err := os.Stat(s.path(name)); errors.Is(err, os.ErrNotExist) {
		return Image{}, errdefs.Errorf(errdefs.ErrNotFound, "image %q does not exist", name)
	}
	im, err := s.load(name)
	if err != nil {
		return Image{}, fmt.Errorf("image %s is broken (delete and import it again): %w", name, err)
	}
	return im, nil
}

// load reads an image's manifest.
func (s *Store) load(name string) (Image, error) {
	m, err := readManifest(s.path(name, layout.ImageManifest))
	if err != nil {
		return Image{}, err
	}
	if m.Name != name {
		return Image{}, fmt.Errorf("manifest names image %q, not %q", m.Name, name)
	}
	return s.image(m), nil
}

// image fills in the paths of m's parts.
func (s *Store) image(m Manifest) Image {
	im := Image{
		Manifest:   m,
		Dir:        s.path(m.Name),
		KernelPath: s.path(m.Name, layout.ImageKernel),
		RootfsPath: s.path(m.Name, layout.ImageRootfs),
	}
	if m.Initrd != nil {
		im.InitrdPath = s.path(m.Name, layout.ImageInitrd)
	}
	return im
}

// Delete removes the image called name. usedBy returns the VMs that use
// an image; when there are any the image is kept and the error (code
// conflict) names them. A broken image can be deleted.
func (s *Store) Delete(ctx context.Context, name string, usedBy func(ctx context.Context, image string) ([]string, error)) error {
	if err := api.ValidName("image", name); err != nil {
		return err
	}
	if _, err := os.Stat(s.path(name)); errors.Is(err, os.ErrNotExist) {
		return errdefs.Errorf(errdefs.ErrNotFound, "image %q does not exist", name)
	}
	if usedBy != nil {
		vms, err := usedBy(ctx, name)
		if err != nil {
			return fmt.Errorf("delete image %s: find the VMs that use it: %w", name, err)
		}
		if len(vms) > 0 {
			return errdefs.Errorf(errdefs.ErrConflict, "image %s is used by VM(s) %s; delete them first", name, strings.Join(vms, ", "))
		}
	}
	l, err := waitLock(ctx, s.path(storeLockFile), unix.LOCK_SH)
	if err != nil {
		return fmt.Errorf("delete image %s: %w", name, err)
	}
	defer l.unlock()
	// One rename takes the image away whole; the slow removal happens
	// where an interrupted one is finished by the next Open.
	gone, err := os.MkdirTemp(s.path(tmpDir), "delete-"+name+"-")
	if err != nil {
		return fmt.Errorf("delete image %s: %w", name, err)
	}
	if err := os.Rename(s.path(name), filepath.Join(gone, name)); err != nil {
		os.Remove(gone)
		if errors.Is(err, os.ErrNotExist) {
			return errdefs.Errorf(errdefs.ErrNotFound, "image %q does not exist", name)
		}
		return fmt.Errorf("delete image %s: %w", name, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return fmt.Errorf("delete image %s: remove its files: %w", name, err)
	}
	return nil
}
