package operation

import (
	"context"
	"errors"
	"slices"
	"time"

	"banger/internal/api"
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
	// Stages says Do runs steps of its own with the operation's Progress
	// (a VM's create inside an image build): they are its stages, and it
	// is none itself, which would be listed before them and end after.
	Stages bool

	ways []Way // a FirstOf: Do and Undo are unused
}

// Way is one way to reach the end of a FirstOf, as steps of its own.
type Way struct {
	Name string
	// Usable (may be nil) says whether the way can be tried now; false
	// passes over it and leaves no stage.
	Usable func() bool
	Steps  []Step
}

// FirstOf is a step that tries ways in order until one succeeds: the
// optimisations of a job that a plainer way can always do (a VM that
// takes a standby, else restores a snapshot, else boots). A way that
// fails is undone (its own steps, in reverse), a stage "fall back to
// NEXT" says why in its detail, a warning is logged, and the next usable
// way is tried; only the failure of the last one fails the step. A
// cancel ends it at once. FirstOf has no stage of its own (its ways'
// steps are the stages), and undoing it undoes the way that succeeded.
func FirstOf(ways ...Way) Step {
	return Step{Name: "first of", ways: ways}
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
	_, err := p.run(ctx, steps)
	return err
}

// run is Run, returning the steps done when it succeeds (what undoing
// them takes).
func (p *Progress) run(ctx context.Context, steps []Step) ([]Step, error) {
	var done []Step
	for _, s := range steps {
		if s.When != nil && ctx.Err() == nil && !s.When() {
			continue
		}
		err := ctx.Err()
		if err == nil && s.ways != nil {
			var chosen []Step
			chosen, err = p.firstOf(ctx, s.ways)
			done = append(done, chosen...)
		} else if err == nil {
			if s.Stages {
				err = s.Do(ctx)
			} else {
				err = p.stage(ctx, s.Name, s.Do)
			}
			if err == nil {
				done = append(done, s)
			}
		}
		if err != nil {
			if ctx.Err() != nil && rpc.CodeOf(err) != rpc.CodeCanceled {
				err = rpc.Errorf(rpc.CodeCanceled, "canceled during %s", s.Name)
			}
			p.undo(ctx, done)
			return nil, err
		}
	}
	return done, nil
}

// firstOf runs a FirstOf's ways (see there) and returns the steps done by
// the one that succeeded.
func (p *Progress) firstOf(ctx context.Context, ways []Way) ([]Step, error) {
	next := func(from int) int {
		for i := from; i < len(ways); i++ {
			if ways[i].Usable == nil || ways[i].Usable() {
				return i
			}
		}
		return -1
	}
	i := next(0)
	if i < 0 {
		return nil, errors.New("no way to do this is usable")
	}
	for {
		done, err := p.run(ctx, ways[i].Steps)
		if err == nil || ctx.Err() != nil {
			return done, err
		}
		n := next(i + 1)
		if n < 0 {
			return nil, err
		}
		why := ways[i].Name + ": " + errorMessage(err)
		logging.From(ctx).Warn().Str("way", ways[i].Name).Str("next", ways[n].Name).Err(err).Msg("fell back to a plainer way")
		p.note(ctx, "fall back to "+ways[n].Name, why)
		i = n
	}
}

// note records a stage that did nothing but say something: done at once,
// with detail.
func (p *Progress) note(ctx context.Context, name, detail string) {
	r, o := p.r, p.o
	r.mu.Lock()
	o.view.Stages = append(o.view.Stages, api.Stage{Name: name, State: api.StageDone, Started: time.Now().UTC(), Detail: detail})
	view := r.snapshot(o)
	r.mu.Unlock()
	r.save(ctx, view)
}

// errorMessage is an error as a stage shows it: an rpc error's message
// without its code.
func errorMessage(err error) string { return rpc.MessageOf(err) }

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

	if r.Hold != "" && r.Hold == o.view.Target+":"+name {
		logging.From(ctx).Warn().Str("stage", name).Msg("held at the start of this stage (bangerd --test-hold-stage)")
		<-ctx.Done()
	}
	err := ctx.Err()
	if err == nil {
		err = logging.Stage(context.WithValue(ctx, progressKey{}, p), name, fn)
	}

	r.mu.Lock()
	st := &o.view.Stages[i]
	st.DurationMS = logging.Millis(time.Since(st.Started))
	st.State = api.StageDone
	if err != nil {
		st.State = api.StageFailed
		st.Error = errorMessage(err)
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

// progressKey is the context key of the Progress whose stage runs.
type progressKey struct{}

// DetailOf returns the Detail of the operation whose stage ctx is in, for
// code below a step that has no Progress of its own to tell what it is
// doing (an image built on first use); outside a stage it does nothing.
func DetailOf(ctx context.Context) func(string) {
	if p, ok := ctx.Value(progressKey{}).(*Progress); ok {
		return p.Detail
	}
	return func(string) {}
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
