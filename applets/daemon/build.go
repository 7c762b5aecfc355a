package daemon

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"banger/applets/daemon/imagestore"
	"banger/applets/daemon/operation"
	"banger/applets/daemon/state"
	"banger/applets/daemon/vm"
	"banger/internal/api"
	"banger/internal/printable"
	"banger/internal/session"
	"banger/internal/treetar"
	"banger/logging"
	"banger/rpc"
)

// imageVMs is what image.commit and image.build ask of the VM service.
type imageVMs interface {
	DiskAtRest(ctx context.Context, vm string, fn func(ctx context.Context, disk, image string) error) error
	ImageDigest(ctx context.Context, image string) (string, error)
	BootScratch(ctx context.Context, prog *operation.Progress, image, name string, cpus, memoryMiB int) error
	RunIn(ctx context.Context, name string, e session.Exec, stdio session.Stdio) (session.ExitStatus, error)
	CopyInto(ctx context.Context, name, dir string, tar io.Reader) error
	Stop(ctx context.Context, p api.VMStop) (api.VM, error)
	Delete(ctx context.Context, p api.VMDelete) (api.VM, error)
}

// Bounds of a build's VM.
const (
	buildStopTimeout = time.Minute
	// stepOutputTail is how much of a failed command's output its error
	// carries.
	stepOutputTail = 8 << 10
)

// buildBegin answers image.build.begin. A recipe is checked at once;
// then, as an operation: its content key is computed, and an image of
// that name with that key is the result as it is (nothing is rebuilt).
// Otherwise the base is made (a Debian suite by mmdebstrap, its packages
// included) or taken (an image), and when the recipe copies or runs
// anything, a VM of the base boots, the packages of a From base are
// installed, the copies made and the commands run in order, and its
// disk becomes the image. The VM, and a base made for the build, are
// deleted whatever happens.
func (m *imageMethods) buildBegin(ctx context.Context, p api.ImageBuild) (api.Operation, error) {
	r, err := checkRecipe(p)
	if err != nil {
		return api.Operation{}, err
	}
	if r.From != "" && r.From != api.DefaultImage && r.From != api.TinyImage { // the built-ins are made on first use
		if _, err := m.store.Get(ctx, r.From); err != nil {
			return api.Operation{}, noImage(err)
		}
	}
	b := &build{m: m, name: p.Name, r: r, scratch: scratchName(rpc.OpIDFrom(ctx)), cpus: p.CPUs, memoryMiB: p.MemoryMiB}
	return m.ops.Begin(ctx, rpc.OpIDFrom(ctx), api.KindImageBuild, p.Name, func(ctx context.Context, prog *operation.Progress) (any, error) {
		defer b.cleanup(context.WithoutCancel(ctx), false)
		err := prog.Run(ctx, b.steps(prog))
		return b.result, err
	}), nil
}

// build is one image build's state, from step to step.
type build struct {
	m    *imageMethods
	name string
	r    recipe

	// scratch names the build's VM and the base made for it, after its
	// operation, so the next daemon finds what a dead one left.
	scratch         string
	cpus, memoryMiB int // the VM's shape; 0 is a VM's default
	key             string
	done            bool   // the image is there: the result, nothing more to do
	base            string // the image the VM boots
	ownBase         bool   // base was made for this build, and goes with it
	vmName          string // the build's VM, once it boots
	result          api.Image
}

func (b *build) steps(prog *operation.Progress) []operation.Step {
	steps := []operation.Step{{Name: "check cache", Do: b.checkCache}, {Name: "base", Do: b.makeBase, When: b.todo}}
	if len(b.r.Copy) == 0 && len(b.r.Run) == 0 && (b.r.From == "" || len(b.r.Packages) == 0) {
		return steps // the base is the image
	}
	steps = append(steps, operation.Step{Name: "boot", When: b.todo, Stages: true, Do: func(ctx context.Context) error {
		err := b.m.vms.BootScratch(ctx, prog, b.base, b.scratch, b.cpus, b.memoryMiB)
		if rpc.CodeOf(err) != rpc.CodeAlreadyExists {
			b.vmName = b.scratch // made, or half made: cleanup deletes it
		}
		return err
	}})
	if b.r.From != "" && len(b.r.Packages) > 0 {
		install := "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -q -y --no-install-recommends " + strings.Join(b.r.Packages, " ")
		steps = append(steps, b.runStep("install packages", install))
	}
	for i, c := range b.r.copies {
		steps = append(steps, operation.Step{Name: "copy " + strconv.Itoa(i+1), When: b.todo, Do: func(ctx context.Context) error { return b.copy(ctx, c) }})
	}
	for i, cmd := range b.r.Run {
		steps = append(steps, b.runStep("run "+strconv.Itoa(i+1), cmd))
	}
	return append(steps,
		operation.Step{Name: "stop", When: b.todo, Do: func(ctx context.Context) error {
			_, err := b.m.vms.Stop(ctx, api.VMStop{Name: b.vmName, TimeoutMS: int(buildStopTimeout.Milliseconds())})
			return err
		}},
		operation.Step{Name: "commit", When: b.todo, Do: b.commit})
}

func (b *build) todo() bool { return !b.done }

// checkCache computes the build's key and looks for an image that has
// it: the name taken by an image of another key is refused, as an
// import's is.
func (b *build) checkCache(ctx context.Context) error {
	var baseDigest string
	if b.r.From != "" {
		var err error
		if baseDigest, err = b.m.vms.ImageDigest(ctx, b.r.From); err != nil {
			return err
		}
	}
	key, err := buildKey(b.r, b.m.mirror, baseDigest)
	if err != nil {
		return err
	}
	b.key = key
	operation.DetailOf(ctx)(key[:19])
	im, err := b.m.store.Get(ctx, b.name)
	switch {
	case err != nil:
		return nil
	case im.BuildKey == key:
		logging.From(ctx).Info().Str("image", b.name).Str("build_key", key).Msg("image build: the image is up to date")
		b.done, b.result = true, b.m.withWarm(toAPIImage(im))
		return nil
	}
	return nameTaken(rpc.Errorf(rpc.CodeAlreadyExists, "image %s exists, not built from this recipe and base", b.name), b.name)
}

// makeBase makes or takes the image the build starts from. A Debian base
// with nothing to do on it is the image itself.
func (b *build) makeBase(ctx context.Context) error {
	if b.r.From != "" {
		b.base = b.r.From
		return nil
	}
	final := len(b.r.Copy) == 0 && len(b.r.Run) == 0
	spec := imagestore.DebianSpec{Name: b.name, Suite: b.r.suite, Packages: b.r.Packages, Mirror: b.m.mirror,
		Kernel: vm.DefaultImageKernel(b.m.kernels), AgentBinary: b.m.agent, Detail: operation.DetailOf(ctx)}
	if final {
		spec.BuildKey = b.key
	} else {
		spec.Name = b.scratch
		b.base, b.ownBase = spec.Name, true
	}
	im, err := b.m.store.EnsureDebian(ctx, spec)
	if err != nil {
		return err
	}
	if err := b.m.db.PutImage(ctx, state.Image{Name: im.Name, Digest: im.Digest, SizeBytes: im.SizeBytes, Created: im.Created, KernelArgs: im.KernelArgs}); err != nil {
		return err
	}
	if final {
		b.done, b.result = true, toAPIImage(im)
	}
	return nil
}

// runStep is a stage that runs cmd with sh -c in the build's VM, its
// output's last line as the stage's detail; a command that fails fails
// the build with its exit status and the end of its output.
func (b *build) runStep(name, cmd string) operation.Step {
	return operation.Step{Name: name, When: b.todo, Do: func(ctx context.Context) error {
		out := &tailBuffer{max: stepOutputTail, detail: operation.DetailOf(ctx)}
		st, err := b.m.vms.RunIn(ctx, b.vmName, session.Exec{Argv: []string{"sh", "-c", cmd}, User: "root"}, session.Stdio{Stdout: out, Stderr: out})
		if err != nil {
			return err
		}
		if st.Code != 0 {
			return rpc.Errorf(rpc.CodeOperationFailed, "%s: `%s` exited with %d%s:\n%s", name, cmd, st.Code, suffix(st.Error), out.String())
		}
		return nil
	}}
}

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

// copy writes a host file or tree into the build's VM: a directory's
// content into the guest path, a file as the guest path.
func (b *build) copy(ctx context.Context, c copyStep) error {
	dir, root := c.guest, c.host
	if !c.dir {
		dir, root = path.Dir(c.guest), filepath.Dir(c.host)
	}
	pr, pw := io.Pipe()
	go func() {
		tw := treetar.New(pw, root)
		var err error
		if c.dir {
			err = filepath.WalkDir(root, func(p string, d os.DirEntry, werr error) error {
				if werr != nil || p == root {
					return werr
				}
				rel, _ := filepath.Rel(root, p)
				return tw.Add(filepath.ToSlash(rel), true)
			})
		} else {
			_, err = tw.File(c.host, path.Base(c.guest))
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	err := b.m.vms.CopyInto(ctx, b.vmName, dir, pr)
	pr.CloseWithError(io.ErrClosedPipe) // the writer ends if the guest stopped reading
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w", c.host, c.guest, err)
	}
	return nil
}

// commit makes the stopped VM's disk the image.
func (b *build) commit(ctx context.Context) error {
	return b.m.vms.DiskAtRest(ctx, b.vmName, func(ctx context.Context, disk, image string) (err error) {
		note := fmt.Sprintf("built on image %s: %d packages, %d copies, %d commands", b.r.From, len(b.r.Packages), len(b.r.Copy), len(b.r.Run))
		if b.r.From == "" {
			note = fmt.Sprintf("built on debian/%s with %d packages: %d copies, %d commands", b.r.suite, len(b.r.Packages), len(b.r.Copy), len(b.r.Run))
		}
		b.result, err = b.m.commitDisk(ctx, commitSpec{name: b.name, vm: b.vmName, disk: disk, image: image, key: b.key, note: note})
		return err
	})
}

// cleanup deletes the build's VM and the base made for it; after a
// dead daemon (afterCrash), it says what it found.
func (b *build) cleanup(ctx context.Context, afterCrash bool) {
	log := logging.From(ctx)
	// Not there is gone: a boot or a base that failed undid itself.
	gone := func(err error) bool { return err == nil || rpc.CodeOf(err) == rpc.CodeNotFound }
	if b.vmName != "" {
		if _, err := b.m.vms.Delete(ctx, api.VMDelete{Name: b.vmName}); !gone(err) {
			log.Warn().Err(err).Str("vm", b.vmName).Msg("the build's VM is left; `banger vm delete` it")
		} else if err == nil && afterCrash {
			log.Info().Str("vm", b.vmName).Msg("deleted the VM of a build a stopped daemon left")
		}
	}
	if b.ownBase {
		if _, err := b.m.delete(ctx, api.VMRef{Name: b.base}); !gone(err) {
			log.Warn().Err(err).Str("image", b.base).Msg("the build's base image is left; `banger image delete` it")
		} else if err == nil && afterCrash {
			log.Info().Str("image", b.base).Msg("deleted the base image of a build a stopped daemon left")
		}
	}
}

// scratchName is the name of the VM (and of the Debian base) of the
// build whose operation is opID.
func scratchName(opID string) string {
	return "build-" + strings.ToLower(opID[max(0, len(opID)-10):])
}

// cleanInterruptedBuilds deletes what the builds a dead daemon left
// behind had made: their VM, running or not, and the base made for
// them. The operations are marked failed already.
func (m *imageMethods) cleanInterruptedBuilds(ctx context.Context, ops []api.Operation) {
	for _, op := range ops {
		if op.Kind != api.KindImageBuild {
			continue
		}
		b := &build{m: m, scratch: scratchName(op.ID), vmName: scratchName(op.ID), base: scratchName(op.ID), ownBase: true}
		b.cleanup(ctx, true)
	}
}

// tailBuffer keeps the last max bytes written to it, and tells detail
// the last line.
type tailBuffer struct {
	mu     sync.Mutex
	max    int
	buf    []byte
	detail func(string)
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	if t.detail != nil {
		lines := strings.Split(strings.TrimRight(string(t.buf), "\n"), "\n")
		if last := lines[len(lines)-1]; last != "" {
			t.detail(printable.String(last, 120))
		}
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
