// Package warm keeps warm snapshots: for an image, the saved state of a
// guest that booted to agent-ready and the disk it had then, so a new VM
// of that image restores instead of booting.
//
// A snapshot is valid only for the Key it was taken with: the image, the
// kernel, the engine, the agent and the VM's shape. One that can no
// longer match (the image, kernel, engine or agent changed) is removed
// when it is looked up, never used; one of another shape stays until a
// snapshot of a new shape replaces it. Each image has at
// most one snapshot, replaced whole: a VM checks a snapshot out (its own
// copy of the disk, a link to the memory file) in one step under the
// store's lock, so a replacement never gives it a disk and a memory of
// two different guests.
package warm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"banger/applets/daemon/filecopy"
	"banger/internal/layout"
)

// A snapshot's directory holds layout.SnapshotMemory, layout.Disk,
// layout.SnapshotManifest and (optional) layout.Console: the saved
// guest's console up to the save, which a restored VM's console starts
// with, boot messages and all.

// partialPrefix marks a snapshot being saved; Open removes leftovers.
const partialPrefix = ".partial-"

// Key is what a snapshot was taken from. File identities are "path size
// mtime", cheap to compare and changed by any rewrite.
type Key struct {
	Image       string `json:"image"`
	ImageDigest string `json:"image_digest"`
	Kernel      string `json:"kernel"`
	Initrd      string `json:"initrd"`
	Engine      string `json:"engine"`
	Agent       string `json:"agent"`
	CPUs        int    `json:"cpus"`
	MemoryMiB   int    `json:"memory_mib"`
	DiskMiB     int    `json:"disk_mib"`
	// Network is the VM's network mode ("" for user-mode, "bridge"):
	// QEMU saves the state of its network backend (slirp's, or a tap's
	// virtio-net header), and a state loads only into the same. Each
	// mode has a snapshot of its own.
	Network string `json:"network,omitempty"`
}

// slot is the directory of key's snapshot: the image's name, and the
// network mode after a dot for another than user-mode (a dot is in no
// image name).
func (k Key) slot() string {
	if k.Network == "" || k.Network == "user" {
		return k.Image
	}
	return k.Image + "." + k.Network
}

// FileID is a file's identity for a Key; a missing file gives "" and
// the error.
func FileID(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s %d %d", path, fi.Size(), fi.ModTime().UnixNano()), nil
}

// Manifest describes a saved snapshot.
type Manifest struct {
	Key         Key       `json:"key"`
	Created     time.Time `json:"created"`
	MemoryBytes int64     `json:"memory_bytes"`
	DiskBytes   int64     `json:"disk_bytes"`
}

// Store is the snapshots under one directory: DIR/IMAGE/ (user-mode VMs'),
// DIR/IMAGE.bridge/ (bridged VMs').
type Store struct {
	dir string
	mu  sync.Mutex // orders check-outs and replacements
}

// Open opens the store at dir, creating it, and removes the leftovers of
// saves a previous daemon did not finish.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open the snapshot store: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("open the snapshot store: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), partialPrefix) {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
	return &Store{dir: dir}, nil
}

func (s *Store) path(image string, file ...string) string {
	return filepath.Join(append([]string{s.dir, image}, file...)...)
}

// manifest reads image's manifest; a missing or unreadable one is none.
func (s *Store) manifest(image string) (Manifest, bool) {
	var m Manifest
	data, err := os.ReadFile(s.path(image, layout.SnapshotManifest))
	if err != nil || json.Unmarshal(data, &m) != nil {
		return m, false
	}
	return m, true
}

// valid reports whether image has a snapshot taken with key whose memory
// is whole: the size it recorded (one truncated by a full disk, say, is a
// state QEMU cannot load). A snapshot that can never be valid again (taken
// of another image digest, kernel, engine or agent, or not whole) is
// removed; one of another VM shape is kept, for VMs of that shape, until
// a save replaces it. (The disk is a qcow2 file, which may grow; QEMU
// refuses one that is broken, and the VM boots instead.) The caller holds
// mu.
func (s *Store) valid(key Key) bool {
	m, ok := s.manifest(key.slot())
	whole := ok && sizeIs(s.path(key.slot(), layout.SnapshotMemory), m.MemoryBytes)
	if whole && m.Key == key {
		return true
	}
	if whole && m.Key.sameButShape(key) {
		return false
	}
	os.RemoveAll(s.path(key.slot()))
	return false
}

// sameButShape says whether k and o differ in the VM's shape only.
func (k Key) sameButShape(o Key) bool {
	k.CPUs, k.MemoryMiB, k.DiskMiB = o.CPUs, o.MemoryMiB, o.DiskMiB
	return k == o
}

func sizeIs(path string, size int64) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Size() == size
}

// Has reports whether a snapshot valid for key exists (and removes a
// stale one).
func (s *Store) Has(key Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.valid(key)
}

// Get returns the manifest of image's snapshot for user-mode VMs, if it
// has one.
func (s *Store) Get(image string) (Manifest, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.manifest(image)
}

// Checkout gives a new VM the snapshot valid for key: a copy of its disk
// at disk, its memory at memory (a hard link, else a copy) and, when
// console is not "", its console up to the save followed by a line that
// says where the restore starts. A disk or console that exists is
// overwritten in place, for a VM process that has them open already
// (a standby launched before its snapshot was saved). It returns false,
// with no memory made, when there is no valid snapshot.
func (s *Store) Checkout(key Key, disk, memory, console string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.valid(key) {
		return false, nil
	}
	if console != "" {
		m, _ := s.manifest(key.slot())
		// A console is worth having, not worth failing a VM for.
		if err := filecopy.Over(s.path(key.slot(), layout.Console), console); err == nil || errors.Is(err, fs.ErrNotExist) {
			f, err := os.OpenFile(console, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
			if err == nil {
				fmt.Fprintf(f, "\n--- banger: restored from the warm snapshot of image %s saved %s ---\n", key.Image, m.Created.Format(time.RFC3339))
				f.Close()
			}
		}
	}
	if err := filecopy.Over(s.path(key.slot(), layout.Disk), disk); err != nil {
		return false, fmt.Errorf("check out the snapshot of %s: %w", key.Image, err)
	}
	if err := os.Link(s.path(key.slot(), layout.SnapshotMemory), memory); err != nil {
		if err := filecopy.New(s.path(key.slot(), layout.SnapshotMemory), memory); err != nil {
			os.Remove(disk)
			return false, fmt.Errorf("check out the snapshot of %s: %w", key.Image, err)
		}
	}
	return true, nil
}

// Save makes the snapshot of key: fill writes the memory and disk files
// it is given, and the snapshot replaces image's old one only once they
// are whole.
func (s *Store) Save(ctx context.Context, key Key, fill func(ctx context.Context, memory, disk string) error) (Manifest, error) {
	tmp := filepath.Join(s.dir, partialPrefix+key.slot()+"-"+ulid.Make().String())
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return Manifest{}, fmt.Errorf("save a snapshot of %s: %w", key.Image, err)
	}
	defer os.RemoveAll(tmp)
	memory, disk := filepath.Join(tmp, layout.SnapshotMemory), filepath.Join(tmp, layout.Disk)
	if err := fill(ctx, memory, disk); err != nil {
		return Manifest{}, err
	}
	m := Manifest{Key: key, Created: time.Now().UTC()}
	for _, f := range []struct {
		path string
		size *int64
	}{{memory, &m.MemoryBytes}, {disk, &m.DiskBytes}} {
		fi, err := os.Stat(f.path)
		if err != nil {
			return Manifest{}, fmt.Errorf("save a snapshot of %s: %w", key.Image, err)
		}
		*f.size = fi.Size()
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Manifest{}, err
	}
	if err := os.WriteFile(filepath.Join(tmp, layout.SnapshotManifest), data, 0o600); err != nil {
		return Manifest{}, fmt.Errorf("save a snapshot of %s: %w", key.Image, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.RemoveAll(s.path(key.slot())); err != nil {
		return Manifest{}, fmt.Errorf("replace the snapshot of %s: %w", key.Image, err)
	}
	if err := os.Rename(tmp, s.path(key.slot())); err != nil {
		return Manifest{}, fmt.Errorf("save a snapshot of %s: %w", key.Image, err)
	}
	return m, nil
}

// Delete removes image's snapshots, of every network mode; having none
// is not an error.
func (s *Store) Delete(image string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	slots, _ := filepath.Glob(s.path(image + ".*"))
	var errs []error
	for _, dir := range append(slots, s.path(image)) {
		if err := os.RemoveAll(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Drop removes the snapshot of key (one that failed to load).
func (s *Store) Drop(key Key) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return os.RemoveAll(s.path(key.slot()))
}
