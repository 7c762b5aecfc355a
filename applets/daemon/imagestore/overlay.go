package imagestore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"banger/applets/daemon/filecopy"
	"banger/internal/errdefs"
)

// Overlay makes a VM's copy-on-write disk at dst: a qcow2 file whose
// backing file is the image's root filesystem, by absolute path, so the
// image stays unchanged and shared. sizeMiB > 0 makes the disk that big
// (at least the image's size; the guest grows its filesystem); 0 keeps
// the image's size. dst must not exist; it appears whole or not at all.
func (s *Store) Overlay(ctx context.Context, image, dst string, sizeMiB int) error {
	im, err := s.Get(ctx, image)
	if err != nil {
		return err
	}
	if sizeMiB < 0 || sizeMiB > 0 && sizeMiB < im.RootfsMiB {
		return errdefs.Errorf(errdefs.ErrInvalid, "disk size %d MiB is smaller than image %s's root filesystem (%d MiB); give at least that, or no size", sizeMiB, image, im.RootfsMiB)
	}
	if _, err := os.Lstat(dst); err == nil {
		return errdefs.Errorf(errdefs.ErrAlreadyExists, "overlay %s already exists", dst)
	}
	tmp := dst + ".partial"
	os.Remove(tmp) // a leftover of an interrupted call
	if err := s.copyTemplate(ctx, im, sizeMiB, tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("make the overlay disk for image %s: %w", image, err)
	}
	// A link, not a rename: it fails instead of replacing a dst that
	// appeared meanwhile.
	err = os.Link(tmp, dst)
	os.Remove(tmp)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return errdefs.Errorf(errdefs.ErrAlreadyExists, "overlay %s already exists", dst)
		}
		return fmt.Errorf("make the overlay disk for image %s: %w", image, err)
	}
	return nil
}

// copyTemplate copies the image's empty overlay of sizeMiB to dst, making
// it first if the image has none yet: one qemu-img run per image and
// size instead of one per VM (a process costs a create ~30 ms; a copy of
// the small file, well under 1 ms). qemu-img writes the same file for the
// same arguments, so the copy is what it would have made.
func (s *Store) copyTemplate(ctx context.Context, im Image, sizeMiB int, dst string) error {
	tmpl := filepath.Join(im.Dir, ".overlay-"+strconv.Itoa(sizeMiB)+".qcow2")
	if _, err := os.Stat(tmpl); err != nil {
		args := []string{"create", "-q", "-f", "qcow2", "-b", im.RootfsPath, "-F", "raw", dst}
		if sizeMiB > 0 {
			args = append(args, strconv.Itoa(sizeMiB)+"M")
		}
		if _, err := run(ctx, toolRun{name: "qemu-img", args: args}); err != nil {
			return err
		}
		// The template appears whole, or not at all, from a part of this
		// call's own; two creates racing make the same file. Failing to
		// keep a template only costs the next create a qemu-img run.
		part, err := os.CreateTemp(im.Dir, ".overlay-*.partial")
		if err != nil {
			return nil
		}
		part.Close()
		if err := filecopy.Over(dst, part.Name()); err == nil {
			os.Rename(part.Name(), tmpl)
		}
		os.Remove(part.Name())
		return nil
	}
	return filecopy.New(tmpl, dst)
}
