package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"banger/applets/daemon/state"
	"banger/internal/agentlink"
	"banger/internal/layout"
	"banger/internal/session"
	"banger/logging"
	"banger/rpc"
)

// syncTimeout bounds the guest's sync before its disk is copied: a
// guest that does not sync in time is copied as it is on the disk (as
// after a power cut, which the copy's fsck then repairs).
const syncTimeout = time.Minute

// DiskAtRest runs fn with the disk of the VM called name held still, and
// the name of the VM's image. A stopped (or failed) VM's disk is as it
// was left. A running VM's guest first writes out what it has cached
// (sync), then its CPUs are paused until fn returns (QEMU flushes the
// disk as it pauses), so fn copies what the guest last wrote; the guest
// runs on afterwards as if nothing happened. The VM is busy meanwhile:
// no stop, start or delete comes in between.
func (s *Service) DiskAtRest(ctx context.Context, name string, fn func(ctx context.Context, disk, image string) error) error {
	release, err := s.claim(name, "having its disk copied")
	if err != nil {
		return err
	}
	defer release()
	vm, err := s.db.GetVM(ctx, name)
	if err != nil {
		return err
	}
	disk := filepath.Join(vm.InstanceDir, layout.Disk)
	if _, err := os.Stat(disk); err != nil {
		return rpc.Errorf(rpc.CodeInvalidParams, "vm %q has no disk (%v)", name, errors.Unwrap(err))
	}
	switch vm.State {
	case state.VMStopped, state.VMFailed:
		return fn(ctx, disk, vm.Image)
	case state.VMRunning:
	default:
		return rpc.Errorf(rpc.CodeConflict, "vm %q is %s; wait for it to be running or stopped", name, vm.State)
	}
	proc := s.proc(name)
	if proc == nil {
		return rpc.Errorf(rpc.CodeNotRunning, "vm %q is not running", name)
	}
	log := logging.From(ctx)
	logging.Stage(ctx, "sync guest", func(ctx context.Context) error {
		sctx, cancel := context.WithTimeout(ctx, syncTimeout)
		defer cancel()
		st, err := guestRun(sctx, proc, session.Exec{Argv: []string{"sync"}}, session.Stdio{})
		if err == nil && st.Code != 0 {
			err = fmt.Errorf("sync exited with %d %s", st.Code, st.Error)
		}
		if err != nil {
			log.Warn().Err(err).Str("vm", name).Msg("the guest did not sync; its disk is copied as it is")
		}
		return nil
	})
	if err := proc.Pause(ctx); err != nil {
		return err
	}
	defer func() {
		if err := proc.Continue(context.WithoutCancel(ctx)); err != nil {
			log.Error().Err(err).Str("vm", name).Msg("the VM paused for its disk's copy does not run again")
		}
	}()
	return fn(ctx, disk, vm.Image)
}

// guestRun runs a command in the guest and waits for it to end, or for
// ctx to.
func guestRun(ctx context.Context, proc Process, e session.Exec, stdio session.Stdio) (session.ExitStatus, error) {
	return runSession(ctx, proc, agentlink.MethodExec, e, stdio)
}

// runSession runs a session of a stream method of the agent (agent.exec,
// agent.untar) until its exit, or until ctx ends: the session's
// connection closes with ctx, so a guest that never answers cannot hold
// the caller.
func runSession(ctx context.Context, proc Process, method string, params any, stdio session.Stdio) (session.ExitStatus, error) {
	conn, err := proc.OpenSession(ctx, method, params)
	if err != nil {
		return session.ExitStatus{}, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	st, err := session.Run(conn, stdio)
	if ctx.Err() != nil {
		return st, ctx.Err()
	}
	return st, err
}
