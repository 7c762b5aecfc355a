package imagestore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

// partsDir holds the kernels prepared and the initrds built by earlier
// imports, by what they were made of, so an import of the same kernel
// takes the part at once (extracting a vmlinux or building an initramfs
// costs about a second each) instead of making it again. A part is hard
// linked into each image that has it; one that no image links any more
// is removed when the store opens.
const partsDir = ".parts"

// cachedPart puts the part called key at dst: a link to the cached file
// when there is one, else made by make at dst and cached. make reports
// false when there is no such part (a kernel that needs no initrd); that
// is cached too, as an empty file, and cachedPart then reports false.
func (s *Store) cachedPart(ctx context.Context, key, dst string, make func() (bool, error)) (bool, error) {
	cached := s.path(partsDir, key)
	if fi, err := os.Stat(cached); err == nil {
		if fi.Size() == 0 {
			return false, nil
		}
		if err := os.Link(cached, dst); err == nil {
			return true, nil
		}
		// Not linkable (another filesystem, a permission): made anew.
	}
	made, err := make()
	if err != nil {
		return false, err
	}
	// Best effort from here: a part not cached only costs the next import
	// its making.
	if err := os.MkdirAll(s.path(partsDir), 0o700); err != nil {
		return made, nil
	}
	tmp := fmt.Sprintf("%s%s%d-%d", cached, partialPart, os.Getpid(), time.Now().UnixNano())
	if made {
		err = os.Link(dst, tmp)
	} else {
		err = os.WriteFile(tmp, nil, 0o444)
	}
	if err == nil {
		err = os.Rename(tmp, cached)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return made, nil
}

// partialPart marks a cached part being written.
const partialPart = ".partial-"

// removeUnusedParts removes the cached parts no image links any more, and
// what an interrupted import left half written. The caller holds the
// store's lock exclusively: no import is linking meanwhile. The markers
// of "no initrd" are kept: they are empty.
func (s *Store) removeUnusedParts() error {
	entries, err := os.ReadDir(s.path(partsDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list cached parts: %w", err)
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if strings.Contains(e.Name(), partialPart) || ok && fi.Size() > 0 && st.Nlink <= 1 {
			os.Remove(s.path(partsDir, e.Name()))
		}
	}
	return nil
}
