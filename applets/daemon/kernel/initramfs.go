package kernel

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/cavaliergopher/cpio"

	"banger/applets/agent/boot"
)

// MaxModule bounds one uncompressed module file.
const MaxModule = 64 << 20

// InitramfsSpec says what goes into an initramfs.
type InitramfsSpec struct {
	// Agent is the banger binary; it becomes /init.
	Agent string
	// Modules are the module files in load order (ModuleIndex.Resolve),
	// relative to ModulesDir.
	Modules    []Module
	ModulesDir string
	// Release is recorded in the manifest.
	Release string
}

// BuildInitramfs writes an uncompressed newc cpio archive to w: the agent
// as /init, the modules (decompressed, so the guest needs no decompressor
// in its kernel) and the manifest that lists their load order. Entries have
// a fixed time and owner, so equal inputs give equal archives.
func BuildInitramfs(w io.Writer, spec InitramfsSpec) (boot.Manifest, error) {
	m := boot.Manifest{Release: spec.Release, Modules: []boot.Module{}}
	cw := cpio.NewWriter(w)
	dirs := map[string]bool{"/": true}
	mkdirs := func(dir string) error {
		var missing []string
		for d := dir; !dirs[d]; d = path.Dir(d) {
			missing = append(missing, d)
		}
		for i := len(missing) - 1; i >= 0; i-- {
			dirs[missing[i]] = true
			hdr := &cpio.Header{Name: strings.TrimPrefix(missing[i], "/"), Mode: cpio.TypeDir | 0o755, ModTime: time.Unix(0, 0)}
			if err := cw.WriteHeader(hdr); err != nil {
				return err
			}
		}
		return nil
	}
	addFile := func(name string, data []byte, perm cpio.FileMode) error {
		if err := mkdirs(path.Dir(name)); err != nil {
			return err
		}
		hdr := &cpio.Header{Name: strings.TrimPrefix(name, "/"), Mode: cpio.TypeReg | perm, Size: int64(len(data)), ModTime: time.Unix(0, 0)}
		if err := cw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := cw.Write(data)
		return err
	}

	agent, err := os.ReadFile(spec.Agent)
	if err != nil {
		return m, fmt.Errorf("read the agent binary: %w", err)
	}
	if err := addFile(boot.Init, agent, 0o755); err != nil {
		return m, fmt.Errorf("write /init: %w", err)
	}
	for _, mod := range spec.Modules {
		data, err := readModule(filepath.Join(spec.ModulesDir, mod.Path))
		if err != nil {
			return m, err
		}
		file := path.Join(boot.ModulesDir, mod.Name+".ko")
		if err := addFile(file, data, 0o644); err != nil {
			return m, fmt.Errorf("write %s: %w", file, err)
		}
		m.Modules = append(m.Modules, boot.Module{Name: mod.Name, File: file, Optional: mod.Optional})
	}
	manifest, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return m, fmt.Errorf("encode the manifest: %w", err)
	}
	if err := addFile(boot.ManifestPath, append(manifest, '\n'), 0o644); err != nil {
		return m, fmt.Errorf("write the manifest: %w", err)
	}
	if err := cw.Close(); err != nil {
		return m, fmt.Errorf("finish the archive: %w", err)
	}
	return m, nil
}

// WriteInitramfs builds the initramfs into the file at dst, atomically.
func WriteInitramfs(dst string, spec InitramfsSpec) (boot.Manifest, error) {
	var buf bytes.Buffer
	m, err := BuildInitramfs(&buf, spec)
	if err != nil {
		return m, fmt.Errorf("build initramfs: %w", err)
	}
	if err := writeFileAtomic(dst, buf.Bytes(), 0o644); err != nil {
		return m, fmt.Errorf("write initramfs: %w", err)
	}
	return m, nil
}

// readModule reads a module file, decompressing .ko.xz, .ko.gz and .ko.zst
// (the way distributions other than Debian 12 ship them).
func readModule(file string) ([]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read module: %w", err)
	}
	var out []byte
	switch {
	case strings.HasSuffix(file, ".ko"):
		return data, nil
	case strings.HasSuffix(file, ".ko.xz"):
		out, err = unxz(data, MaxModule)
	case strings.HasSuffix(file, ".ko.gz"):
		out, err = gunzipAll(data)
	case strings.HasSuffix(file, ".ko.zst"):
		out, err = unzstd(data, MaxModule)
	default:
		return nil, fmt.Errorf("module %s: unknown file type", file)
	}
	if err != nil {
		return nil, fmt.Errorf("decompress module %s: %w", file, err)
	}
	return out, nil
}

func gunzipAll(data []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	return readLimited(zr, MaxModule)
}
