// Package operation runs the daemon's long work as operations, the way
// Incus does: the call that begins one returns its id at once; clients
// read its status, long-poll until it ends, or cancel it. An operation is
// a list of named steps, each with its undo, run by one small step runner
// that records each stage's timing for status and in the log; a failure or
// a cancel undoes what was done, in reverse.
//
// It knows nothing of VMs: the daemon hands it the steps.
package operation

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/logging"
	"banger/rpc"
)

// Keep is how long a finished operation stays readable (the protocol
// promises at least 10 minutes).
const Keep = 15 * time.Minute

// Persist records an operation's current view (the state database). It is
// called at the start, after each stage and at the end; its errors are
// logged, not fatal: the operation itself is what matters.
type Persist func(ctx context.Context, op api.Operation) error

// Registry holds the daemon's operations.
type Registry struct {
	persist Persist
	// Explain (may be nil) rewords an operation's error before it is
	// recorded: the daemon says a full disk as such.
	Explain func(error) error
	// Hold is "TARGET:STAGE": at the start of the stage STAGE, the
	// operations on TARGET (a VM's name) stop until they are canceled,
	// or their daemon killed. The tests' way to kill a daemon in the
	// middle of a stage that takes milliseconds; "" for none.
	Hold string

	mu  sync.Mutex // guards ops and every op's view
	ops map[string]*op
	wg  sync.WaitGroup // running operations
}

type op struct {
	view   api.Operation
	cancel context.CancelFunc
	done   chan struct{} // closed when the operation ends
}

// NewRegistry returns an empty registry that records through persist
// (which may be nil).
func NewRegistry(persist Persist) *Registry {
	return &Registry{persist: persist, ops: map[string]*op{}}
}

// Func is an operation's body. It runs its steps with p and returns the
// result (marshaled into the operation) or an error.
type Func func(ctx context.Context, p *Progress) (any, error)

// Begin starts an operation with the given id (the op id of the call that
// began it) and returns its first view at once. The work runs on a
// context that keeps ctx's values (op id, logger) but not its
// cancellation: the operation outlives the call that began it.
func (r *Registry) Begin(ctx context.Context, id, kind, target string, fn Func) api.Operation {
	r.gc()
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	o := &op{
		view:   api.Operation{ID: id, Kind: kind, Target: target, State: api.OpRunning, Created: time.Now().UTC(), Stages: []api.Stage{}},
		cancel: cancel,
		done:   make(chan struct{}),
	}
	r.mu.Lock()
	r.ops[id] = o
	first := r.snapshot(o)
	r.mu.Unlock()
	r.save(runCtx, first)

	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer cancel()
		p := &Progress{r: r, o: o}
		result, err := fn(runCtx, p)
		r.finish(runCtx, o, result, err)
	}()
	return first
}

// finish records the outcome and wakes the waiters.
func (r *Registry) finish(ctx context.Context, o *op, result any, err error) {
	var raw json.RawMessage
	if err == nil && result != nil {
		raw, err = json.Marshal(result)
	}
	if err != nil && r.Explain != nil {
		err = r.Explain(err)
	}
	r.mu.Lock()
	now := time.Now().UTC()
	o.view.Finished = &now
	o.view.Current = ""
	switch {
	case err == nil:
		o.view.State, o.view.Result = api.OpSucceeded, raw
	case rpc.CodeOf(err) == rpc.CodeCanceled:
		o.view.State = api.OpCanceled
	default:
		o.view.State = api.OpFailed
	}
	if err != nil {
		o.view.Error = &rpc.ErrorResponse{Code: rpc.CodeOf(err), Message: err.Error(), OpID: o.view.ID}
		switch e := err.(type) {
		case *rpc.ErrorResponse:
			o.view.Error.Message = e.Message
		case *errdefs.Error:
			o.view.Error.Message = e.Message
		}
	}
	final := r.snapshot(o)
	r.mu.Unlock()
	r.save(ctx, final)
	log := logging.From(ctx)
	if err != nil {
		log.Warn().Str("operation", final.Kind).Str("state", final.State).Str("code", final.Error.Code).
			Float64("duration_ms", logging.Millis(now.Sub(final.Created))).Msg("operation ended")
	} else {
		log.Info().Str("operation", final.Kind).Str("state", final.State).
			Float64("duration_ms", logging.Millis(now.Sub(final.Created))).Msg("operation ended")
	}
	close(o.done)
}

// Status returns the operation's current view.
func (r *Registry) Status(id string) (api.Operation, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, ok := r.ops[id]
	if !ok {
		return api.Operation{}, rpc.Errorf(rpc.CodeNotFound, "operation %q not found (finished operations are kept %s)", id, Keep)
	}
	return r.snapshot(o), nil
}

// Wait blocks until the operation ends, timeout passes or ctx ends, then
// returns its view.
func (r *Registry) Wait(ctx context.Context, id string, timeout time.Duration) (api.Operation, error) {
	r.mu.Lock()
	o, ok := r.ops[id]
	r.mu.Unlock()
	if !ok {
		return r.Status(id)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-o.done:
	case <-t.C:
	case <-ctx.Done():
		return api.Operation{}, ctx.Err()
	}
	return r.Status(id)
}

// Cancel asks a running operation to stop and undo; it returns the view
// at once (the operation ends when its undo is done: Wait for it).
func (r *Registry) Cancel(ctx context.Context, id string) (api.Operation, error) {
	r.mu.Lock()
	o, ok := r.ops[id]
	r.mu.Unlock()
	if !ok {
		return r.Status(id)
	}
	logging.From(ctx).Info().Str("operation_id", id).Msg("operation cancel requested")
	o.cancel()
	return r.Status(id)
}

// List returns every operation held, oldest first.
func (r *Registry) List() []api.Operation {
	r.gc()
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]api.Operation, 0, len(r.ops))
	for _, o := range r.ops {
		out = append(out, r.snapshot(o))
	}
	sortByCreated(out)
	return out
}

// Adopt puts an operation that is over (read back from the database after
// a restart) into the registry, so its outcome stays readable.
func (r *Registry) Adopt(view api.Operation) {
	o := &op{view: view, cancel: func() {}, done: make(chan struct{})}
	close(o.done)
	r.mu.Lock()
	if _, exists := r.ops[view.ID]; !exists {
		r.ops[view.ID] = o
	}
	r.mu.Unlock()
}

// Shutdown cancels every running operation and waits for them (their
// undo included) until ctx ends.
func (r *Registry) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	for _, o := range r.ops {
		o.cancel()
	}
	r.mu.Unlock()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// gc drops operations that finished more than Keep ago.
func (r *Registry) gc() {
	cutoff := time.Now().Add(-Keep)
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, o := range r.ops {
		if o.view.Finished != nil && o.view.Finished.Before(cutoff) {
			delete(r.ops, id)
		}
	}
}

// snapshot copies o's view; r.mu must be held.
func (r *Registry) snapshot(o *op) api.Operation {
	v := o.view
	v.Stages = append([]api.Stage(nil), o.view.Stages...)
	for i := range v.Stages {
		if v.Stages[i].State == api.StageRunning {
			v.Stages[i].DurationMS = logging.Millis(time.Since(v.Stages[i].Started))
		}
	}
	return v
}

func (r *Registry) save(ctx context.Context, v api.Operation) {
	if r.persist == nil {
		return
	}
	if err := r.persist(ctx, v); err != nil {
		logging.From(ctx).Warn().Err(err).Str("operation_id", v.ID).Msg("record operation")
	}
}
