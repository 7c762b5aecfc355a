package imagestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrCorrupt is wrapped by Verify when a part no longer matches the
// manifest.
var ErrCorrupt = errors.New("image does not match its manifest")

// Manifest describes an image; it is stored as manifest.json in the
// image's directory and written last, so an image with a manifest is
// complete.
type Manifest struct {
	Name string `json:"name"`
	// Digest is "sha256:" and the hex sha256 of the parts' lines, one per
	// part in the order kernel, initrd, rootfs: "ROLE SHA256HEX SIZE\n".
	// Two images with equal parts have equal digests.
	Digest  string    `json:"digest"`
	Created time.Time `json:"created"` // RFC 3339, UTC
	// SizeBytes is the sum of the parts' sizes (the root filesystem's
	// apparent size; it is sparse on disk).
	SizeBytes int64 `json:"size_bytes"`
	// RootfsMiB is the size of the root filesystem, and the smallest disk
	// a VM of this image can have.
	RootfsMiB  int    `json:"rootfs_mib"`
	KernelArgs string `json:"kernel_args,omitempty"`

	Kernel Part  `json:"kernel"`
	Initrd *Part `json:"initrd,omitempty"`
	Rootfs Part  `json:"rootfs"`
	// Agent is the banger binary placed at boot.AgentPath; its digest tells
	// which banger an image carries.
	Agent Part `json:"agent"`

	// OCI is what the OCI image an image was made from says of itself
	// (its config: Env, WorkingDir, User, Entrypoint, Cmd).
	OCI *OCIImage `json:"oci,omitempty"`

	// BuildKey is the content key of the recipe and base the image was
	// built from; a build with the same key has nothing to do.
	BuildKey string `json:"build_key,omitempty"`

	// Notes say what the import changed or left out (device nodes
	// skipped, a filesystem repaired), for the user to read.
	Notes []string `json:"notes,omitempty"`

	// Problem is set by List for an image that cannot be read; it is
	// never stored.
	Problem string `json:"problem,omitempty"`
}

// Part is one file of an image.
type Part struct {
	// File is the part's file name in the image directory (for the
	// agent: its path inside the root filesystem).
	File   string `json:"file"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// Hash says what SHA256 is the hash of: HashFile (the file's bytes)
	// when empty, or HashNonzeroBlocks.
	Hash string `json:"hash,omitempty"`
	From Origin `json:"from"`
}

// Origin says where a part came from.
type Origin struct {
	// Kind is one of the Origin* constants.
	Kind string `json:"kind"`
	Path string `json:"path,omitempty"`
	// SHA256 is the source file's, when it was read whole (a kernel).
	SHA256 string `json:"sha256,omitempty"`
}

// Origin kinds.
const (
	OriginFile    = "file"    // copied or prepared from a file
	OriginBuilt   = "built"   // made by the store's BuildInitrd hook from the kernel at Path
	OriginDir     = "dir"     // a root filesystem from a directory
	OriginTar     = "tar"     // a root filesystem from a tarball
	OriginExt4    = "ext4"    // a root filesystem from an ext4 image
	OriginOCI     = "oci"     // a root filesystem from an OCI image; Path is its reference
	OriginBusybox = "busybox" // the tiny image's root, around the busybox at Path
	OriginDebian  = "debian"  // a Debian root made by mmdebstrap; Path is its suite and packages
	OriginVM      = "vm"      // a root filesystem committed from a VM's disk; Path names the VM
)

// digest computes the image digest of the manifest's parts.
func (m *Manifest) digest() string {
	var b strings.Builder
	line := func(role string, p *Part) {
		if p != nil {
			fmt.Fprintf(&b, "%s %s %d\n", role, p.SHA256, p.Size)
		}
	}
	line("kernel", &m.Kernel)
	line("initrd", m.Initrd)
	line("rootfs", &m.Rootfs)
	sum := sha256.Sum256([]byte(b.String()))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// writeManifest writes m to path and syncs it.
func writeManifest(path string, m Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	_, err = f.Write(append(data, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}

// readManifest reads and checks a manifest.
func readManifest(path string) (Manifest, error) {
	var m Manifest
	data, err := os.ReadFile(path)
	if err != nil {
		return m, fmt.Errorf("read manifest: %w", err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("decode manifest %s: %w", path, err)
	}
	if m.Name == "" || m.Digest == "" || m.Kernel.File == "" || m.Rootfs.File == "" {
		return m, fmt.Errorf("manifest %s is incomplete", path)
	}
	return m, nil
}

// Verify recomputes the digests of the image's parts and checks them, and
// the image digest, against the manifest. A mismatch wraps ErrCorrupt.
func (s *Store) Verify(ctx context.Context, name string) error {
	im, err := s.Get(ctx, name)
	if err != nil {
		return err
	}
	parts := []*Part{&im.Kernel, im.Initrd, &im.Rootfs}
	for _, p := range parts {
		if p == nil {
			continue
		}
		size, sum, err := hashFile(ctx, filepath.Join(im.Dir, p.File), p.Hash, false)
		if err != nil {
			return fmt.Errorf("verify image %s: %w", name, err)
		}
		if size != p.Size || sum != p.SHA256 {
			return fmt.Errorf("verify image %s: %s has size %d sha256 %s, manifest says %d %s: %w",
				name, p.File, size, sum, p.Size, p.SHA256, ErrCorrupt)
		}
	}
	if d := im.digest(); d != im.Digest {
		return fmt.Errorf("verify image %s: digest of the parts is %s, manifest says %s: %w", name, d, im.Digest, ErrCorrupt)
	}
	return nil
}
