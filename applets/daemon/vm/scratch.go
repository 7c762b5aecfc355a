package vm

import (
	"context"
	"fmt"
	"io"

	"banger/applets/daemon/operation"
	"banger/internal/agentlink"
	"banger/internal/api"
	"banger/internal/session"
)

// A scratch VM is one the daemon boots for work of its own (an image
// build's steps), named after that work's operation, and deleted when it
// ends. It is a VM like any other meanwhile: `vm list` shows it; the
// next daemon deletes the scratch VMs of the operations a dead one left.

// BootScratch creates and boots the VM name, of image, for the operation
// whose progress is prog (its create's steps are stages of that
// operation): cold, so the guest is a fresh boot of the image's disk,
// not a snapshot's memory; with user-mode networking, so it reaches what
// the host reaches.
func (s *Service) BootScratch(ctx context.Context, prog *operation.Progress, image, name string, cpus, memoryMiB int) error {
	p, err := checkCreate(api.VMCreate{Name: name, Image: image, Cold: true, Network: api.NetworkUser, CPUs: cpus, MemoryMiB: memoryMiB}, "")
	if err != nil {
		return err
	}
	release, err := s.claim(p.Name, "being created")
	if err != nil {
		return err
	}
	defer release()
	_, err = s.create(ctx, prog, p, s.newRow(p, api.NetworkUser, nil, nil), nil)
	return err
}

// ImageDigest is the digest of the image called name, made first when
// it is a built-in one not made yet.
func (s *Service) ImageDigest(ctx context.Context, name string) (string, error) {
	img, err := s.images.Resolve(ctx, name)
	return img.Digest, err
}

// RunIn runs a command in the running VM name, with its image's exec
// defaults, until it ends or ctx does.
func (s *Service) RunIn(ctx context.Context, name string, e session.Exec, stdio session.Stdio) (session.ExitStatus, error) {
	vm, proc, err := s.running(ctx, name)
	if err != nil {
		return session.ExitStatus{}, err
	}
	return guestRun(ctx, proc, s.withImageDefaults(ctx, vm.Image, e, false), stdio)
}

// CopyInto unpacks a tar stream into dir in the running VM name, with
// the agent's rules (no entry leaves dir).
func (s *Service) CopyInto(ctx context.Context, name, dir string, tar io.Reader) error {
	_, proc, err := s.running(ctx, name)
	if err != nil {
		return err
	}
	st, err := runSession(ctx, proc, agentlink.MethodUntar, session.Untar{Dir: dir}, session.Stdio{Stdin: tar})
	if err == nil && st.Code != 0 {
		err = fmt.Errorf("unpack into %s in the guest: %s (exit %d)", dir, st.Error, st.Code)
	}
	return err
}
