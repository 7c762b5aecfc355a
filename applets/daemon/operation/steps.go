package operation

import (
	"context"
	"errors"
	"slices"
	"time"

	"banger/applets/api"
	"banger/logging"
	"banger/rpc"
)

// UndoTimeout bounds the whole undo of a failed or canceled operation.
const UndoTimeout = 2 * time.Minute

// Step is one named step of an operation and its undo. Undo (may be nil)
// runs only if Do succeeded and a later step failed or the operation was
// canceled.
type Step struct {
	Name string
	Do   func(ctx context.Context) error
	Undo func(ctx context.Context) error
	// When (may be nil) is asked just before the step would run; false
	// skips it, and it leaves no stage: for a step that an earlier one
	// decides on (a warm start restores instead of booting).
	When func() bool
}

// Progress is an operation's handle to record its stages.
type Progress struct {
	r *Registry
	o *op
}

// Run runs steps in order, each as a stage (visible in status while it
// runs, logged with its duration_ms when it ends). When a step fails or ctx
// is canceled, the steps done so far are undone in reverse order, on a
// context that is not canceled (bounded by UndoTimeout), and the error is
// returned: canceled if the cancel came first.
func (p *Progress) Run(ctx context.Context, steps []Step) error {
	var done []Step
	for _, s := range steps {
		if s.When != nil && ctx.Err() == nil && !s.When() {
			continue
		}
		err := ctx.Err()
		if err == nil {
			err = p.stage(ctx, s.Name, s.Do)
		}
		if err != nil {
			if ctx.Err() != nil {
				err = rpc.Errorf(rpc.CodeCanceled, "canceled during %s", s.Name)
			}
			p.undo(ctx, done)
			return err
		}
		done = append(done, s)
	}
	return nil
}

func (p *Progress) undo(ctx context.Context, done []Step) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), UndoTimeout)
	defer cancel()
	for _, s := range slices.Backward(done) {
		if s.Undo == nil {
			continue
		}
		if err := p.stage(ctx, "undo "+s.Name, s.Undo); err != nil {
			// Keep undoing the rest: leaking one thing is better than
			// leaking everything after it.
			logging.From(ctx).Error().Err(err).Str("stage", "undo "+s.Name).Msg("undo failed; something may be left behind")
			continue
		}
		p.mark(s.Name, api.StageUndone)
	}
}

// stage runs fn as a stage named name.
func (p *Progress) stage(ctx context.Context, name string, fn func(context.Context) error) error {
	r, o := p.r, p.o
	r.mu.Lock()
	o.view.Stages = append(o.view.Stages, api.Stage{Name: name, State: api.StageRunning, Started: time.Now().UTC()})
	i := len(o.view.Stages) - 1
	o.view.Current = name
	r.mu.Unlock()

	err := logging.Stage(ctx, name, fn)

	r.mu.Lock()
	st := &o.view.Stages[i]
	st.DurationMS = logging.Millis(time.Since(st.Started))
	st.State = api.StageDone
	if err != nil {
		st.State = api.StageFailed
		st.Error = err.Error()
		var re *rpc.ErrorResponse
		if errors.As(err, &re) {
			st.Error = re.Message
		}
	}
	o.view.Current = ""
	view := r.snapshot(o)
	r.mu.Unlock()
	r.save(ctx, view)
	return err
}

// Detail sets the progress text of the stage running now (a percentage,
// a count), which status shows beside its name.
func (p *Progress) Detail(detail string) {
	p.r.mu.Lock()
	defer p.r.mu.Unlock()
	if n := len(p.o.view.Stages); n > 0 && p.o.view.Stages[n-1].State == api.StageRunning {
		p.o.view.Stages[n-1].Detail = detail
	}
}

// mark sets the state of the latest stage called name.
func (p *Progress) mark(name, state string) {
	p.r.mu.Lock()
	defer p.r.mu.Unlock()
	for i := len(p.o.view.Stages) - 1; i >= 0; i-- {
		if p.o.view.Stages[i].Name == name {
			p.o.view.Stages[i].State = state
			return
		}
	}
}

func sortByCreated(ops []api.Operation) {
	slices.SortFunc(ops, func(a, b api.Operation) int { return a.Created.Compare(b.Created) })
}
