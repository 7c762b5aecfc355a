package vm

import (
	"context"
	"fmt"
	"strings"
	"time"

	"banger/applets/daemon/state"
	"banger/internal/printable"
	"banger/logging"
	"banger/rpc"
)

// A guest can end on its own: it powers itself off (poweroff in the
// guest), or its kernel panics (its agent, PID 1, died), which with
// panic=-1 and -no-reboot ends QEMU too. The daemon watches every running
// VM's process and, when it exits without the daemon having asked, marks
// the VM stopped, or failed with the end of its console, and releases
// its tap and runtime files at once rather than at the next stop, delete
// or daemon start.

// exitClaimRetry is how often the watch of an exited VM asks again for
// the VM while another change of it (a stop, a delete) holds it: that
// change usually is what ended it, and forgets the process itself.
const exitClaimRetry = 50 * time.Millisecond

// watchExit waits for r's process to exit, and records the VM's end
// unless the process was replaced or forgotten first.
func (s *Service) watchExit(name string, r *runningProc) {
	select {
	case <-r.proc.Exited():
	case <-r.unwatch:
		return
	}
	var release func()
	for {
		var err error
		if release, err = s.claimBrief(name, "noticing that it exited"); err == nil {
			break
		}
		select {
		case <-r.unwatch:
			return
		case <-time.After(exitClaimRetry):
		}
	}
	defer release()
	select {
	case <-r.unwatch:
		return // a stop, kill or delete dealt with it in the meantime
	default:
	}
	opID := rpc.NewOpID()
	ctx := logging.WithOp(rpc.WithOpID(context.Background(), opID), s.log, opID, "vm exited")
	vm, err := s.db.GetVM(ctx, name)
	if err != nil {
		return
	}
	st, why := exitState(vm.InstanceDir, name)
	if _, err := s.markEnded(ctx, name, st, why); err != nil {
		logging.From(ctx).Warn().Err(err).Str("vm", name).Msg("the end of a VM not recorded")
		return
	}
	ev := logging.From(ctx).Info()
	if st == state.VMFailed {
		ev = logging.From(ctx).Warn().Str("why", why)
	}
	ev.Str("vm", name).Str("state", st).Msg("the VM's guest ended on its own")
}

// exitState tells from the end of a VM's console how its guest ended: a
// kernel panic after its last power-off is a failure (why says so, with
// the panic's line), anything else a stop.
func exitState(instanceDir, name string) (st, why string) {
	console := consoleTail(instanceDir)
	panicAt := strings.LastIndex(console, "Kernel panic")
	if panicAt < 0 || panicAt < strings.LastIndex(console, "reboot: Power down") {
		return state.VMStopped, ""
	}
	line, _, _ := strings.Cut(console[panicAt:], "\n")
	return state.VMFailed, fmt.Sprintf("the guest's kernel panicked (when its agent, PID 1, dies, it does): %s; `banger vm logs %s` has the rest", printable.String(line, 200), name)
}
