package agent

import (
	"context"
	"sync"

	"golang.org/x/sys/unix"

	"banger/internal/agentlink"
	"banger/logging"
	"banger/rpc"
)

// sessionTable finds a running exec command by the op id of its call, so
// that a signal can reach it on a stream of its own: on the session's own
// stream it could wait behind input that the command does not read.
type sessionTable struct {
	mu   sync.Mutex
	byOp map[string]*command
}

// add registers c under opID and returns the function that removes it.
// A session without an op id is not registered.
func (t *sessionTable) add(opID string, c *command) func() {
	if opID == "" {
		return func() {}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byOp == nil {
		t.byOp = map[string]*command{}
	}
	t.byOp[opID] = c
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.byOp[opID] == c {
			delete(t.byOp, opID)
		}
	}
}

func (t *sessionTable) get(opID string) *command {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byOp[opID]
}

// signal signals a session's command: its process group, and with
// SIGKILL the command itself too (the host gave up on the session).
func (a *agent) signal(ctx context.Context, p agentlink.SignalParams) (struct{}, error) {
	if p.Signal < 1 || p.Signal > 64 {
		return struct{}{}, rpc.Errorf(rpc.CodeInvalidParams, "signal %d: want 1 to 64", p.Signal)
	}
	c := a.sessions.get(p.OpID)
	if c == nil {
		return struct{}{}, rpc.Errorf(rpc.CodeNotFound, "no running command of session %q", p.OpID)
	}
	logging.From(ctx).Info().Str("session", p.OpID).Int("pid", c.proc.Pid).Str("signal", unix.SignalName(unix.Signal(p.Signal))).Msg("command signalled")
	if p.Signal == int(unix.SIGKILL) {
		c.r.kill(c.proc.Pid)
		return struct{}{}, nil
	}
	if err := c.r.signalGroup(c.proc.Pid, unix.Signal(p.Signal)); err != nil {
		return struct{}{}, rpc.Errorf(rpc.CodeNotFound, "%v", err)
	}
	return struct{}{}, nil
}
