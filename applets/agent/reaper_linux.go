package agent

import (
	"context"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

// reapChildren waits for every child that exits. As PID 1 the agent
// inherits every orphan of the guest, and an orphan that is not waited
// for stays a zombie. It reaps any pid, so nothing else in the agent may
// wait for its own children with os/exec: processes the agent starts must
// get their status from here.
func reapChildren(ctx context.Context) {
	sig := make(chan os.Signal, 16)
	signal.Notify(sig, unix.SIGCHLD)
	defer signal.Stop(sig)
	for {
		// Reap first: children that exited before Notify sent no signal.
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-sig:
		}
	}
}
