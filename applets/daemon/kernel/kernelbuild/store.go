// Package kernelbuild builds banger's microVM kernel from a distribution's
// kernel source package (tinyconfig and banger's fragment, everything
// built in) and keeps the kernels it built, one directory each:
// <root>/NAME/{vmlinux,config,manifest.json}.
//
// Unlike package kernel it runs external tools (tar, make, the compiler),
// each in its own process group so a cancel stops the whole build. It
// knows nothing of images or operations: the daemon composes its steps.
package kernelbuild

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/layout"
)

// The store's temporary names (a kernel's files are layout's Kernel*).
const (
	buildPrefix = ".build-" // a build's source tree, removed when it ends
	tmpPrefix   = ".tmp-"   // a kernel being installed
)

// Manifest describes a built kernel.
type Manifest struct {
	Name    string    `json:"name"`
	Release string    `json:"release"` // "6.1.158"
	Source  string    `json:"source"`  // the source tarball it was built from
	Created time.Time `json:"created"`
	// SHA256 and SizeBytes are the vmlinux's.
	SHA256    string `json:"sha256"`
	SizeBytes int64  `json:"size_bytes"`
	// Objects is how many objects the compile built; the next build's
	// progress estimate.
	Objects      int     `json:"objects"`
	BuildSeconds float64 `json:"build_seconds"`
}

// Kernel is a built kernel in the store.
type Kernel struct {
	Manifest
	Dir         string `json:"dir"`
	VmlinuxPath string `json:"vmlinux_path"`
	ConfigPath  string `json:"config_path"`
}

// Store is a directory of built kernels.
type Store struct {
	root string
}

// Open opens the store in root, creating it, and removes what interrupted
// builds and installs left behind.
func Open(root string) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("open kernel store %s: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("open kernel store: %w", err)
	}
	entries, err := os.ReadDir(abs)
	if err != nil {
		return nil, fmt.Errorf("open kernel store: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), buildPrefix) || strings.HasPrefix(e.Name(), tmpPrefix) {
			os.RemoveAll(filepath.Join(abs, e.Name()))
		}
	}
	return &Store{root: abs}, nil
}

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

// BuildDir is where the kernel called name is built.
func (s *Store) BuildDir(name string) string { return filepath.Join(s.root, buildPrefix+name) }

// VmlinuxPath is where the kernel called name's vmlinux is once built.
func (s *Store) VmlinuxPath(name string) string {
	return filepath.Join(s.root, name, layout.KernelVmlinux)
}

// Get reads the kernel called name; not_found when there is none.
func (s *Store) Get(name string) (Kernel, error) {
	if err := api.ValidName("kernel", name); err != nil {
		return Kernel{}, err
	}
	dir := filepath.Join(s.root, name)
	data, err := os.ReadFile(filepath.Join(dir, layout.KernelManifest))
	if errors.Is(err, os.ErrNotExist) {
		return Kernel{}, errdefs.Errorf(errdefs.ErrNotFound, "kernel %q not found", name)
	}
	if err != nil {
		return Kernel{}, fmt.Errorf("read kernel %s: %w", name, err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return Kernel{}, fmt.Errorf("read kernel %s: manifest: %w", name, err)
	}
	return Kernel{Manifest: m, Dir: dir, VmlinuxPath: filepath.Join(dir, layout.KernelVmlinux), ConfigPath: filepath.Join(dir, layout.KernelConfig)}, nil
}

// List returns the built kernels, by name.
func (s *Store) List() ([]Kernel, error) {
	entries, err := os.ReadDir(s.root)
	if err != nil {
		return nil, fmt.Errorf("list kernels: %w", err)
	}
	var out []Kernel
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		k, err := s.Get(e.Name())
		if errors.Is(err, errdefs.ErrNotFound) {
			continue // not complete
		}
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Delete removes the kernel called name, unless users (given its vmlinux
// path) names images that boot it: conflict then.
func (s *Store) Delete(name string, users func(vmlinux string) ([]string, error)) error {
	k, err := s.Get(name)
	if err != nil {
		return err
	}
	if users != nil {
		names, err := users(k.VmlinuxPath)
		if err != nil {
			return err
		}
		if len(names) > 0 {
			return errdefs.Errorf(errdefs.ErrConflict, "kernel %s is used by image(s) %s; delete them first", name, strings.Join(names, ", "))
		}
	}
	// Rename first: a kernel is there whole or not at all.
	tmp := filepath.Join(s.root, tmpPrefix+name)
	os.RemoveAll(tmp)
	if err := os.Rename(k.Dir, tmp); err != nil {
		return fmt.Errorf("delete kernel %s: %w", name, err)
	}
	return os.RemoveAll(tmp)
}

// Install puts the vmlinux and .config of the build in buildDir into the
// store as the kernel called m.Name, replacing one of that name.
func (s *Store) Install(ctx context.Context, buildDir string, m Manifest) (Kernel, error) {
	if err := api.ValidName("kernel", m.Name); err != nil {
		return Kernel{}, err
	}
	tmp := filepath.Join(s.root, tmpPrefix+m.Name)
	os.RemoveAll(tmp)
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("install kernel %s: %w", m.Name, err)
	}
	defer os.RemoveAll(tmp) // a no-op after the rename
	sum, size, err := copyFile(filepath.Join(buildDir, "vmlinux"), filepath.Join(tmp, layout.KernelVmlinux))
	if err != nil {
		return Kernel{}, fmt.Errorf("install kernel %s: %w", m.Name, err)
	}
	if _, _, err := copyFile(filepath.Join(buildDir, ".config"), filepath.Join(tmp, layout.KernelConfig)); err != nil {
		return Kernel{}, fmt.Errorf("install kernel %s: %w", m.Name, err)
	}
	m.SHA256, m.SizeBytes = sum, size
	if m.Created.IsZero() {
		m.Created = time.Now().UTC()
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Kernel{}, err
	}
	if err := os.WriteFile(filepath.Join(tmp, layout.KernelManifest), append(data, '\n'), 0o644); err != nil {
		return Kernel{}, fmt.Errorf("install kernel %s: %w", m.Name, err)
	}
	dst := filepath.Join(s.root, m.Name)
	old := filepath.Join(s.root, tmpPrefix+m.Name+".old")
	os.RemoveAll(old)
	if err := os.Rename(dst, old); err != nil && !errors.Is(err, os.ErrNotExist) {
		return Kernel{}, fmt.Errorf("install kernel %s: %w", m.Name, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Rename(old, dst)
		return Kernel{}, fmt.Errorf("install kernel %s: %w", m.Name, err)
	}
	os.RemoveAll(old)
	return s.Get(m.Name)
}

// copyFile copies src to dst and returns the hex sha256 and size.
func copyFile(src, dst string) (string, int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return hex.EncodeToString(h.Sum(nil)), n, err
}

// LogPath is where the build of the kernel called name logs the tools'
// output; it stays after the build, for reading a failure.
func (s *Store) LogPath(name string) string { return filepath.Join(s.root, name+".build.log") }

// Contains reports whether path is a file of a kernel in the store.
func (s *Store) Contains(path string) bool {
	if s == nil {
		return false
	}
	rel, err := filepath.Rel(s.root, path)
	return err == nil && filepath.IsLocal(rel) && !strings.HasPrefix(rel, ".")
}
