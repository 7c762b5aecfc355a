package imagestore

import (
	"cmp"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"banger/applets/agent/boot"
	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/layout"
	"banger/logging"
)

// ImportSpec says what an image is made of. Exactly one of RootfsDir,
// RootfsTar, RootfsExt4, RootfsDisk and OCI is given.
type ImportSpec struct {
	Name       string
	KernelPath string // a bzImage or vmlinux; PrepareKernel makes the bootable one
	InitrdPath string // optional; without it BuildInitrd may make one

	RootfsDir  string // a directory holding the guest's root
	RootfsTar  string // a tarball of it: plain, gzip, xz, zstd or bzip2
	RootfsExt4 string // an ext4 image of it (not a whole disk)
	// RootfsDisk is a VM's disk (a qcow2 overlay on its image, or any
	// format qemu-img reads holding an ext4 filesystem): flattened into
	// the store, then edited as an ext4 image is. Its reader shares it
	// with the VM's engine process, which must hold it still (paused).
	RootfsDisk string
	// Origin says where RootfsDisk comes from (a VM), for the manifest.
	Origin string
	// OCI is an OCI image reference in skopeo's syntax (api.ParseOCIRef),
	// local paths absolute; its linux/amd64 image's layers are flattened.
	OCI string
	// Progress (may be nil) is told the bytes of OCI's layers read.
	Progress Progress

	// AgentBinary is the banger binary; it becomes boot.AgentPath.
	AgentBinary string
	// KernelArgs are extra kernel arguments the image boots with.
	KernelArgs string
	// SizeMiB is the root filesystem's size; 0 computes it from the
	// content with headroom (or keeps an ext4 image's own size).
	SizeMiB int
	// Defaults is what the image says of itself (Env, WorkingDir...)
	// when its source does not: a committed VM's are its image's.
	Defaults *OCIImage
	// Notes go into the manifest before the import's own.
	Notes []string
	// BuildKey is recorded in the manifest (Manifest.BuildKey).
	BuildKey string
	// KernelOrigin, when KernelPath is another image's copy of its
	// kernel, is what that image records its kernel was made from: the
	// new image is then one of that kernel's users too.
	KernelOrigin *Origin
}

// Import builds the image spec describes and publishes it under its name.
// A name in use is already_exists; a name being imported by someone else
// right now is conflict.
func (s *Store) Import(ctx context.Context, spec ImportSpec) (Image, error) {
	b, err := s.checkSpec(spec)
	if err != nil {
		return Image{}, err
	}
	l, err := tryLock(s.path(locksDir, spec.Name), unix.LOCK_EX)
	if errors.Is(err, errLocked) {
		return Image{}, errdefs.Errorf(errdefs.ErrConflict, "image %s is being imported right now; wait for that import, or choose another name", spec.Name)
	}
	if err != nil {
		return Image{}, fmt.Errorf("import image %s: %w", spec.Name, err)
	}
	defer l.unlock()
	if err := s.checkFree(spec.Name); err != nil {
		return Image{}, err
	}
	return s.build(ctx, b)
}

// Check validates an import as Import does before it writes anything,
// so a caller that runs the import later (as an operation) can refuse a
// bad one at once.
func (s *Store) Check(spec ImportSpec) error {
	if _, err := s.checkSpec(spec); err != nil {
		return err
	}
	return s.checkFree(spec.Name)
}

// checkFree refuses a name an image has.
func (s *Store) checkFree(name string) error {
	if _, err := os.Lstat(s.path(name)); err == nil {
		return errdefs.Errorf(errdefs.ErrAlreadyExists, "image %s already exists", name)
	}
	return nil
}

// buildSpec is a checked import.
type buildSpec struct {
	name, kernel, initrd, agent, kernelArgs string
	sizeMiB                                 int
	rootfs                                  rootfsSource
	notes                                   []string
	buildKey                                string
	// replace, when set, takes the image of that name away just before
	// the new one is published in its place (ReplaceAgent).
	replace      func() error
	kernelOrigin *Origin
}

// rootfsSource is where a root filesystem comes from. populate fills a
// staging tree; it is nil for an ext4 image, which is edited instead.
type rootfsSource struct {
	from     Origin
	populate func(ctx context.Context, st *stager) error
	// oci is filled by populate with what an OCI image says of itself;
	// for other sources, the import's Defaults.
	oci *OCIImage
	// file is the ext4 image (or, with disk set, the VM's disk) that is
	// copied and edited when populate is nil.
	file string
	// disk says file is a VM's disk, flattened rather than copied.
	disk bool
}

// checkSpec validates an import before anything is written, with errors
// that say what to give instead.
func (s *Store) checkSpec(spec ImportSpec) (buildSpec, error) {
	b, err := checkCommon(spec)
	if err != nil {
		return b, err
	}
	n := 0
	for _, p := range []string{spec.RootfsDir, spec.RootfsTar, spec.RootfsExt4, spec.RootfsDisk, spec.OCI} {
		if p != "" {
			n++
		}
	}
	if n != 1 {
		return b, errdefs.Errorf(errdefs.ErrInvalid, "give exactly one root filesystem: a directory, a tarball, an ext4 image or an OCI image (%d given)", n)
	}
	switch {
	case spec.OCI != "":
		src, err := ociSource(spec.OCI, spec.Progress)
		if err != nil {
			return b, err
		}
		b.rootfs = src
	case spec.RootfsDir != "":
		fi, err := os.Stat(spec.RootfsDir)
		if err != nil {
			return b, missing("rootfs directory", spec.RootfsDir, "give the directory that holds the guest's root", err)
		}
		if !fi.IsDir() {
			return b, errdefs.Errorf(errdefs.ErrInvalid, "rootfs directory %s is not a directory; a tarball or an ext4 image has its own option", spec.RootfsDir)
		}
		if err := checkRootfsDir(spec.RootfsDir, s.root); err != nil {
			return b, err
		}
		dir := spec.RootfsDir
		b.rootfs = rootfsSource{from: Origin{Kind: OriginDir, Path: absPath(dir)},
			populate: func(ctx context.Context, st *stager) error { return stageDir(ctx, st, dir) }}
	case spec.RootfsTar != "":
		if err := checkFile("rootfs tarball", spec.RootfsTar, "give a tar file (plain, .gz, .xz, .zst or .bz2)"); err != nil {
			return b, err
		}
		file := spec.RootfsTar
		b.rootfs = rootfsSource{from: Origin{Kind: OriginTar, Path: absPath(file)},
			populate: func(ctx context.Context, st *stager) error { return stageTarFile(ctx, st, file) }}
	case spec.RootfsDisk != "":
		if err := checkFile("VM disk", spec.RootfsDisk, "give the disk of a VM"); err != nil {
			return b, err
		}
		b.rootfs = rootfsSource{from: Origin{Kind: OriginVM, Path: spec.Origin}, file: absPath(spec.RootfsDisk), disk: true}
	default:
		if err := checkFile("rootfs ext4 image", spec.RootfsExt4, "give an ext4 filesystem image"); err != nil {
			return b, err
		}
		file := absPath(spec.RootfsExt4)
		b.rootfs = rootfsSource{from: Origin{Kind: OriginExt4, Path: file}, file: file}
	}
	b.rootfs.oci = cmp.Or(b.rootfs.oci, spec.Defaults)
	return b, nil
}

// checkCommon validates what every import has: the name, the kernel, the
// initrd, the agent and the options.
func checkCommon(spec ImportSpec) (buildSpec, error) {
	b := buildSpec{name: spec.Name, kernel: spec.KernelPath, initrd: spec.InitrdPath,
		agent: spec.AgentBinary, kernelArgs: spec.KernelArgs, sizeMiB: spec.SizeMiB, notes: spec.Notes, buildKey: spec.BuildKey, kernelOrigin: spec.KernelOrigin}
	if err := api.ValidName("image", spec.Name); err != nil {
		return b, err
	}
	if err := checkFile("kernel", spec.KernelPath, "give a kernel, such as /boot/vmlinuz-$(uname -r)"); err != nil {
		return b, err
	}
	if spec.InitrdPath != "" {
		if err := checkFile("initrd", spec.InitrdPath, "give an initrd file, or none"); err != nil {
			return b, err
		}
	}
	if err := checkFile("agent binary", spec.AgentBinary, "give the banger binary"); err != nil {
		return b, err
	}
	if spec.SizeMiB < 0 {
		return b, errdefs.Errorf(errdefs.ErrInvalid, "size %d MiB is negative; give a size in MiB, or none", spec.SizeMiB)
	}
	if strings.ContainsAny(spec.KernelArgs, "\n\x00") {
		return b, errdefs.Errorf(errdefs.ErrInvalid, "kernel arguments must be one line")
	}
	return b, nil
}

// checkFile checks that path names a file this process can read.
func checkFile(what, path, hint string) error {
	if path == "" {
		return errdefs.Errorf(errdefs.ErrInvalid, "no %s given; %s", what, hint)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return missing(what, path, hint, err)
	}
	if fi.IsDir() {
		return errdefs.Errorf(errdefs.ErrInvalid, "%s %s is a directory; %s", what, path, hint)
	}
	f, err := os.Open(path)
	if err != nil {
		return errdefs.Errorf(errdefs.ErrInvalid, "%s %s cannot be read (%v); make it readable by the daemon's user", what, path, errors.Unwrap(err))
	}
	f.Close()
	return nil
}

// missing is the error for a path that cannot be looked at.
func missing(what, path, hint string, err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return errdefs.Errorf(errdefs.ErrNotFound, "%s %s does not exist; %s", what, path, hint)
	}
	return errdefs.Errorf(errdefs.ErrInvalid, "%s %s cannot be read (%v); %s", what, path, errors.Unwrap(err), hint)
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// build makes the image in a temporary directory of the store and renames
// it into place; on any failure, or a cancel, the temporary directory is
// removed, and a crash leaves it for the next Open to remove. The caller
// holds the name's lock.
func (s *Store) build(ctx context.Context, b buildSpec) (Image, error) {
	fail := func(err error) (Image, error) {
		return Image{}, fmt.Errorf("import image %s: %w", b.name, err)
	}
	if s.opts.Built != nil {
		defer s.opts.Built()
	}
	l, err := waitLock(ctx, s.path(storeLockFile), unix.LOCK_SH)
	if err != nil {
		return fail(err)
	}
	defer l.unlock()
	tmp, err := os.MkdirTemp(s.path(tmpDir), b.name+"-")
	if err != nil {
		return fail(err)
	}
	published := false
	defer func() {
		if !published {
			os.RemoveAll(tmp)
		}
	}()

	var kernelSum string // of the file the kernel was made from, when it was read
	m := Manifest{Name: b.name, Created: time.Now().UTC().Truncate(time.Second), KernelArgs: b.kernelArgs, Notes: slices.Clip(b.notes), BuildKey: b.buildKey}
	steps := []struct {
		name string
		fn   func() error
	}{
		// The kernel first: a file that is no kernel fails in a second,
		// not after a root filesystem is built.
		{"kernel", func() error { return s.stepKernel(ctx, tmp, b, &m, &kernelSum) }},
		{"agent", func() error { return stepAgent(ctx, b, &m) }},
		{"initrd", func() error { return s.stepInitrd(ctx, tmp, b, &m, kernelSum) }},
		{"rootfs", func() error { return stepRootfs(ctx, tmp, b, &m) }},
		{"digest", func() error { return stepDigest(ctx, tmp, &m) }},
	}
	log := logging.From(ctx)
	for _, st := range steps {
		start := time.Now()
		if err := st.fn(); err != nil {
			return fail(err)
		}
		log.Debug().Str("image", b.name).Str("stage", st.name).Float64("duration_ms", logging.Millis(time.Since(start))).Msg("image import stage")
	}
	if err := writeManifest(filepath.Join(tmp, layout.ImageManifest), m); err != nil {
		return fail(err)
	}
	if err := syncPath(tmp); err != nil {
		return fail(err)
	}
	if b.replace != nil {
		if err := b.replace(); err != nil {
			return fail(err)
		}
	}
	// The commit: a rename of a directory onto a name that exists fails,
	// so a concurrent import of the same name elsewhere cannot be lost.
	if err := os.Rename(tmp, s.path(b.name)); err != nil {
		if errors.Is(err, os.ErrExist) || errors.Is(err, unix.ENOTEMPTY) {
			return Image{}, s.checkFree(b.name)
		}
		return fail(fmt.Errorf("publish: %w", err))
	}
	published = true
	// Best effort: the image is there either way; the sync only makes the
	// rename durable sooner.
	syncPath(s.root)
	return s.image(m), nil
}

// stepKernel makes the image's kernel with the PrepareKernel hook, or
// takes the one an earlier import of the same kernel file made; sum is
// set to that file's sha256.
func (s *Store) stepKernel(ctx context.Context, tmp string, b buildSpec, m *Manifest, sum *string) error {
	dst := filepath.Join(tmp, layout.ImageKernel)
	m.Kernel = Part{File: layout.ImageKernel, From: Origin{Kind: OriginFile, Path: absPath(b.kernel)}}
	if b.kernelOrigin != nil {
		m.Kernel.From = *b.kernelOrigin
	}
	if s.opts.PrepareKernel == nil {
		if _, err := copySparse(ctx, b.kernel, dst, 0o644); err != nil {
			return fmt.Errorf("copy the kernel: %w", err)
		}
		return nil
	}
	var err error
	if _, *sum, err = hashFile(ctx, b.kernel, HashFile, false); err != nil {
		return fmt.Errorf("read the kernel: %w", err)
	}
	if b.kernelOrigin == nil {
		m.Kernel.From.SHA256 = *sum
	}
	_, err = s.cachedPart(ctx, "vmlinux-"+*sum, dst, func() (bool, error) {
		if err := s.opts.PrepareKernel(ctx, b.kernel, dst); err != nil {
			return false, fmt.Errorf("prepare the kernel %s: %w", b.kernel, err)
		}
		return true, nil
	})
	return err
}

// stepInitrd copies the given initrd, or has BuildInitrd make one (or
// takes the one made for the same kernel file, of sha256 kernelSum, and
// agent).
func (s *Store) stepInitrd(ctx context.Context, tmp string, b buildSpec, m *Manifest, kernelSum string) error {
	dst := filepath.Join(tmp, layout.ImageInitrd)
	switch {
	case b.initrd != "":
		if _, err := copySparse(ctx, b.initrd, dst, 0o644); err != nil {
			return fmt.Errorf("copy the initrd: %w", err)
		}
		m.Initrd = &Part{File: layout.ImageInitrd, From: Origin{Kind: OriginFile, Path: absPath(b.initrd)}}
	case s.opts.BuildInitrd != nil:
		// Of the kernel's modules, with the agent as its init: the same
		// kernel and agent make the same initrd.
		build := func() (bool, error) { return s.opts.BuildInitrd(ctx, b.kernel, dst) }
		var made bool
		var err error
		if kernelSum != "" {
			made, err = s.cachedPart(ctx, "initrd-"+kernelSum+"-"+m.Agent.SHA256, dst, build)
		} else {
			made, err = build()
		}
		if err != nil {
			return fmt.Errorf("build an initrd for %s: %w", b.kernel, err)
		}
		if !made {
			return os.RemoveAll(dst)
		}
		m.Initrd = &Part{File: layout.ImageInitrd, From: Origin{Kind: OriginBuilt, Path: absPath(b.kernel)}}
	}
	return nil
}

// stepAgent records the agent binary, with a note when it cannot run in
// a guest as it is (a dynamically linked build).
func stepAgent(ctx context.Context, b buildSpec, m *Manifest) error {
	size, sum, err := hashFile(ctx, b.agent, HashFile, false)
	if err != nil {
		return fmt.Errorf("read the agent binary: %w", err)
	}
	m.Agent = Part{File: boot.AgentPath, Size: size, SHA256: sum, From: Origin{Kind: OriginFile, Path: absPath(b.agent)}}
	if static, err := isStatic(b.agent); err == nil && !static {
		m.Notes = append(m.Notes, "the agent binary is dynamically linked, and guests have no loader for it; build banger with CGO_ENABLED=0")
	}
	return nil
}

// stepRootfs builds the root filesystem and checks it.
func stepRootfs(ctx context.Context, tmp string, b buildSpec, m *Manifest) error {
	file := filepath.Join(tmp, layout.ImageRootfs)
	var notes []string
	var err error
	if b.rootfs.populate == nil {
		notes, err = importExt4(ctx, ext4Spec{src: b.rootfs.file, disk: b.rootfs.disk, file: file, tmp: tmp, agent: b.agent, sizeMiB: b.sizeMiB})
	} else {
		notes, err = buildRootfs(ctx, tmp, b)
	}
	if err != nil {
		return err
	}
	m.Notes = append(m.Notes, notes...)
	if err := checkImage(ctx, file, m.Agent.Size); err != nil {
		return err
	}
	fi, err := os.Stat(file)
	if err != nil {
		return err
	}
	m.RootfsMiB = int(fi.Size() / mib)
	m.Rootfs = Part{File: layout.ImageRootfs, From: b.rootfs.from}
	m.OCI = b.rootfs.oci
	return nil
}

// buildRootfs fills a staging tree from the source, adds the agent, and
// writes the ext4 image from it.
func buildRootfs(ctx context.Context, tmp string, b buildSpec) ([]string, error) {
	staging := filepath.Join(tmp, stagingDir)
	st, err := newStager(staging)
	if err != nil {
		return nil, err
	}
	defer st.close()
	if err := b.rootfs.populate(ctx, st); err != nil {
		return nil, err
	}
	if err := st.addGuestParts(ctx, b.agent); err != nil {
		return nil, fmt.Errorf("add the agent: %w", err)
	}
	if err := st.setTimes(); err != nil {
		return nil, err
	}
	sv, err := st.survey()
	if err != nil {
		return nil, err
	}
	if sv.bytes > maxContentMiB*mib {
		return nil, errdefs.Errorf(errdefs.ErrInvalid, "the root file system holds %d GiB of data, more than the %d GiB an image may", sv.bytes>>30, maxContentMiB>>10)
	}
	spec := mkfsSpec{staging: staging, file: filepath.Join(tmp, layout.ImageRootfs), sizeMiB: b.sizeMiB, entries: sv.entries, userSize: b.sizeMiB > 0}
	if !spec.userSize {
		spec.sizeMiB = defaultSizeMiB(sv.bytes)
	}
	if err := mkfs(ctx, spec); err != nil {
		return nil, err
	}
	if err := applyFixups(ctx, spec.file, sv.fixups); err != nil {
		return nil, err
	}
	if err := st.applyXattrs(ctx, tmp, spec.file); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(staging); err != nil {
		return nil, fmt.Errorf("remove the staging tree: %w", err)
	}
	notes := append(st.skipNotes(), st.notes...)
	if len(sv.unfixable) > 0 {
		notes = append(notes, fmt.Sprintf("owner and mode not set on %d entries whose names debugfs cannot take: %s", len(sv.unfixable), strings.Join(sv.unfixable[:min(3, len(sv.unfixable))], ", ")))
	}
	return notes, nil
}

// stepDigest hashes the parts (making the root filesystem sparse on the
// way), makes them read-only, and computes the image digest.
func stepDigest(ctx context.Context, tmp string, m *Manifest) error {
	m.SizeBytes = 0
	for _, p := range []*Part{&m.Kernel, m.Initrd, &m.Rootfs} {
		if p == nil {
			continue
		}
		file := filepath.Join(tmp, p.File)
		// The root filesystem's hash skips its zeros, which are most of
		// it; it is made sparse on the way.
		rootfs := p.File == layout.ImageRootfs
		if rootfs {
			p.Hash = HashNonzeroBlocks
		}
		size, sum, err := hashFile(ctx, file, p.Hash, rootfs)
		if err != nil {
			return err
		}
		if size == 0 {
			return fmt.Errorf("%s is empty", p.File)
		}
		p.Size, p.SHA256 = size, sum
		m.SizeBytes += size
		// Read-only: VMs share the parts, and write to their overlays.
		if err := os.Chmod(file, 0o444); err != nil {
			return err
		}
		if p.File != layout.ImageRootfs { // hashFile synced the root filesystem
			if err := syncPath(file); err != nil {
				return err
			}
		}
	}
	m.Digest = m.digest()
	return nil
}

// isStatic reports whether an ELF executable has no program interpreter,
// so it runs wherever its architecture does.
func isStatic(file string) (bool, error) {
	f, err := elf.Open(file)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}
