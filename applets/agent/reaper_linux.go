package agent

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// reaper waits for the agent's children and hands each status to whoever
// started the child. As PID 1 the agent inherits every orphan of the
// guest, and an orphan that is not waited for stays a zombie, so PID 1
// waits for any pid; nothing else in the agent may wait for its own
// children (os/exec's Wait would race it and lose): processes the agent
// runs are started through start and get their status from here.
type reaper struct {
	// all makes the reaper wait for any child, as PID 1 must. Without it
	// it waits only for the processes started through it: a test process
	// has other children, whose owners wait for them.
	all bool

	// mu is held across a start and the registration of its pid, and
	// across each round of waits, so a child that exits at once cannot
	// be reaped before its waiter is registered. It guards waiters.
	mu      sync.Mutex
	waiters map[int]chan<- unix.WaitStatus
}

func newReaper(all bool) *reaper {
	return &reaper{all: all, waiters: map[int]chan<- unix.WaitStatus{}}
}

// start starts a process and registers it for its status, which arrives
// once on the returned channel. The caller releases the process after
// the status arrives.
func (r *reaper) start(path string, argv []string, attr *os.ProcAttr) (*os.Process, <-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, err := os.StartProcess(path, argv, attr)
	if err != nil {
		return nil, nil, err
	}
	status := make(chan unix.WaitStatus, 1)
	r.waiters[p.Pid] = status
	return p, status, nil
}

// signalGroup signals the process group that pid leads, as long as pid
// has not been reaped: until then the pid, and so the group's id, cannot
// be another process's.
func (r *reaper) signalGroup(pid int, sig unix.Signal) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.waiters[pid]; !ok {
		return fmt.Errorf("signal process group %d: its leader has exited", pid)
	}
	return unix.Kill(-pid, sig)
}

// kill kills the process group that pid leads, and pid itself, which
// may have left its group, unless pid has been reaped already.
func (r *reaper) kill(pid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.waiters[pid]; ok {
		unix.Kill(-pid, unix.SIGKILL)
		unix.Kill(pid, unix.SIGKILL)
	}
}

// run waits for children until ctx ends, woken by SIGCHLD.
func (r *reaper) run(ctx context.Context) {
	sig := make(chan os.Signal, 16)
	signal.Notify(sig, unix.SIGCHLD)
	defer signal.Stop(sig)
	for {
		// Reap first: children that exited before Notify sent no signal.
		// Signals coalesce, so each round waits until none is left.
		r.reap()
		select {
		case <-ctx.Done():
			return
		case <-sig:
		}
	}
}

func (r *reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.all {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if pid <= 0 || err != nil {
				return
			}
			r.deliver(pid, ws)
		}
	}
	for pid := range r.waiters {
		var ws unix.WaitStatus
		if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); got == pid && err == nil {
			r.deliver(pid, ws)
		}
	}
}

// deliver hands a status to its waiter; an orphan's has none.
func (r *reaper) deliver(pid int, ws unix.WaitStatus) {
	if w, ok := r.waiters[pid]; ok {
		w <- ws // buffered, and sent once
		delete(r.waiters, pid)
	}
}

// exitStatus is how a shell reports ws: the exit code, or 128 and the
// signal that killed the process. (Without WUNTRACED a wait reports
// nothing else.)
func exitStatus(ws unix.WaitStatus) (code, signal int) {
	if ws.Signaled() {
		return 128 + int(ws.Signal()), int(ws.Signal())
	}
	return ws.ExitStatus(), 0
}
