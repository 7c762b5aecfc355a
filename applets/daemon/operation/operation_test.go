package operation

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"banger/internal/api"
	"banger/rpc"
)

// recorder keeps what the steps did, in order.
type recorder struct {
	mu  sync.Mutex
	log []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	r.log = append(r.log, s)
	r.mu.Unlock()
}

func (r *recorder) steps(names ...string) []Step {
	var out []Step
	for _, n := range names {
		out = append(out, Step{
			Name: n,
			Do:   func(context.Context) error { r.add("do " + n); return nil },
			Undo: func(context.Context) error { r.add("undo " + n); return nil },
		})
	}
	return out
}

func wait(t *testing.T, reg *Registry, id string) api.Operation {
	t.Helper()
	v, err := reg.Wait(context.Background(), id, 10*time.Second)
	if err != nil || !v.Done() {
		t.Fatalf("operation did not end: %+v %v", v, err)
	}
	return v
}

func TestStepsRunAndResultIsKept(t *testing.T) {
	var persisted []api.Operation
	var mu sync.Mutex
	reg := NewRegistry(func(_ context.Context, op api.Operation) error {
		mu.Lock()
		persisted = append(persisted, op)
		mu.Unlock()
		return nil
	})
	rec := &recorder{}
	first := reg.Begin(context.Background(), "op-1", "test", "box", func(ctx context.Context, p *Progress) (any, error) {
		return map[string]string{"name": "box"}, p.Run(ctx, rec.steps("a", "b", "c"))
	})
	if first.State != api.OpRunning || first.ID != "op-1" {
		t.Fatalf("first view: %+v", first)
	}
	v := wait(t, reg, "op-1")
	if v.State != api.OpSucceeded || string(v.Result) != `{"name":"box"}` || len(v.Stages) != 3 {
		t.Fatalf("final: %+v", v)
	}
	for _, s := range v.Stages {
		if s.State != api.StageDone || s.Started.IsZero() {
			t.Errorf("stage: %+v", s)
		}
	}
	if !slices.Equal(rec.log, []string{"do a", "do b", "do c"}) {
		t.Errorf("log: %v", rec.log)
	}
	mu.Lock()
	last := persisted[len(persisted)-1]
	mu.Unlock()
	if last.State != api.OpSucceeded {
		t.Errorf("last persisted: %+v", last)
	}
	if ops := reg.List(); len(ops) != 1 {
		t.Errorf("list: %+v", ops)
	}
	_, err := reg.Status("op-nope")
	if rpc.CodeOf(err) != rpc.CodeNotFound {
		t.Errorf("unknown op: %v", err)
	}
}

func TestFailureUndoesInReverse(t *testing.T) {
	reg := NewRegistry(nil)
	rec := &recorder{}
	steps := rec.steps("a", "b")
	steps = append(steps, Step{Name: "c", Do: func(context.Context) error {
		return rpc.Errorf(rpc.CodeUnavailable, "no engine")
	}})
	reg.Begin(context.Background(), "op-2", "test", "", func(ctx context.Context, p *Progress) (any, error) {
		return nil, p.Run(ctx, steps)
	})
	v := wait(t, reg, "op-2")
	if v.State != api.OpFailed || v.Error == nil || v.Error.Code != rpc.CodeUnavailable || v.Error.OpID != "op-2" || v.Error.Message != "no engine" {
		t.Fatalf("final: %+v %+v", v, v.Error)
	}
	if !slices.Equal(rec.log, []string{"do a", "do b", "undo b", "undo a"}) {
		t.Errorf("log: %v", rec.log)
	}
	states := map[string]string{}
	for _, s := range v.Stages {
		states[s.Name] = s.State
	}
	if states["a"] != api.StageUndone || states["c"] != api.StageFailed || states["undo a"] != api.StageDone {
		t.Errorf("stages: %+v", v.Stages)
	}
}

func TestCancelDuringAStepUndoes(t *testing.T) {
	reg := NewRegistry(nil)
	rec := &recorder{}
	started := make(chan struct{})
	steps := rec.steps("a")
	steps = append(steps, Step{Name: "slow", Do: func(ctx context.Context) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}, Undo: func(context.Context) error { rec.add("undo slow"); return nil }})
	reg.Begin(context.Background(), "op-3", "test", "", func(ctx context.Context, p *Progress) (any, error) {
		return nil, p.Run(ctx, steps)
	})
	<-started
	if v, _ := reg.Status("op-3"); v.Current != "slow" {
		t.Errorf("current stage: %q", v.Current)
	}
	if _, err := reg.Cancel(context.Background(), "op-3"); err != nil {
		t.Fatal(err)
	}
	v := wait(t, reg, "op-3")
	if v.State != api.OpCanceled || v.Error.Code != rpc.CodeCanceled {
		t.Fatalf("final: %+v", v)
	}
	// The slow step never finished, so only "a" is undone.
	if !slices.Equal(rec.log, []string{"do a", "undo a"}) {
		t.Errorf("log: %v", rec.log)
	}
}

func TestWaitTimesOutOnARunningOperation(t *testing.T) {
	reg := NewRegistry(nil)
	release := make(chan struct{})
	reg.Begin(context.Background(), "op-4", "test", "", func(ctx context.Context, p *Progress) (any, error) {
		<-release
		return nil, nil
	})
	v, err := reg.Wait(context.Background(), "op-4", 50*time.Millisecond)
	if err != nil || v.Done() {
		t.Fatalf("wait: %+v %v", v, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := reg.Wait(ctx, "op-4", time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("wait with a canceled ctx: %v", err)
	}
	close(release)
	wait(t, reg, "op-4")
	if err := reg.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestAdoptKeepsAnEndedOperationReadable(t *testing.T) {
	reg := NewRegistry(nil)
	now := time.Now()
	reg.Adopt(api.Operation{ID: "op-5", Kind: "vm.create", State: api.OpFailed, Created: now, Finished: &now})
	v, err := reg.Wait(context.Background(), "op-5", time.Second)
	if err != nil || v.State != api.OpFailed {
		t.Fatalf("adopted: %+v %v", v, err)
	}
}

// A step whose When says no is skipped without a stage, and an earlier
// step can decide it.
func TestWhenSkipsAStepAnEarlierOneDecided(t *testing.T) {
	reg := NewRegistry(nil)
	rec := &recorder{}
	restore := false
	steps := rec.steps("resolve", "restore", "boot")
	steps[0].Do = func(context.Context) error { rec.add("do resolve"); restore = true; return nil }
	steps[1].When = func() bool { return restore }
	steps[2].When = func() bool { return !restore }
	reg.Begin(context.Background(), "op-w", "test", "", func(ctx context.Context, p *Progress) (any, error) {
		return nil, p.Run(ctx, steps)
	})
	v := wait(t, reg, "op-w")
	if v.State != api.OpSucceeded || len(v.Stages) != 2 || v.Stages[1].Name != "restore" {
		t.Fatalf("final: %+v", v)
	}
	if !slices.Equal(rec.log, []string{"do resolve", "do restore"}) {
		t.Errorf("log: %v", rec.log)
	}
}

// A FirstOf falls back from a way that fails to the next usable one,
// undoing the failed way's steps and saying why in a stage; a later
// failure undoes the way that succeeded.
func TestFirstOfFallsBackAndUndoesTheWayTaken(t *testing.T) {
	reg := NewRegistry(nil)
	rec := &recorder{}
	standby := rec.steps("take standby", "resume")
	standby[1].Do = func(context.Context) error { rec.add("do resume"); return errors.New("session shutdown") }
	restore := rec.steps("restore")
	boot := rec.steps("launch", "wait")
	after := rec.steps("save")
	after[0].Do = func(context.Context) error { rec.add("do save"); return errors.New("disk full") }
	steps := append(rec.steps("record"), FirstOf(
		Way{Name: "standby", Steps: standby},
		Way{Name: "restore", Usable: func() bool { return false }, Steps: restore},
		Way{Name: "boot", Steps: boot},
	))
	reg.Begin(context.Background(), "op-f", "test", "", func(ctx context.Context, p *Progress) (any, error) {
		return nil, p.Run(ctx, append(steps, after...))
	})
	v := wait(t, reg, "op-f")
	if v.State != api.OpFailed || v.Error == nil || v.Error.Message != "disk full" {
		t.Fatalf("final: %+v", v)
	}
	want := []string{"do record", "do take standby", "do resume", "undo take standby",
		"do launch", "do wait", "do save", "undo wait", "undo launch", "undo record"}
	if !slices.Equal(rec.log, want) {
		t.Errorf("log:\n%v\nwant\n%v", rec.log, want)
	}
	var names []string
	for _, s := range v.Stages {
		names = append(names, s.Name+" "+s.State)
	}
	wantStages := []string{"record undone", "take standby undone", "resume failed", "undo take standby done",
		"fall back to boot done", "launch undone", "wait undone", "save failed", "undo wait done", "undo launch done", "undo record done"}
	if !slices.Equal(names, wantStages) {
		t.Errorf("stages:\n%v\nwant\n%v", names, wantStages)
	}
	if fb := v.Stages[4]; fb.Detail != "standby: session shutdown" {
		t.Errorf("fall back stage: %+v", fb)
	}
}

// The last way's failure is the step's; a cancel does not fall back.
func TestFirstOfFailsWithTheLastWayAndStopsOnCancel(t *testing.T) {
	reg := NewRegistry(nil)
	rec := &recorder{}
	fail := func(name, msg string) []Step {
		s := rec.steps(name)
		s[0].Do = func(context.Context) error { rec.add("do " + name); return rpc.Errorf(rpc.CodeTimeout, "%s", msg) }
		return s
	}
	reg.Begin(context.Background(), "op-l", "test", "", func(ctx context.Context, p *Progress) (any, error) {
		return nil, p.Run(ctx, []Step{FirstOf(Way{Name: "a", Steps: fail("a", "first")}, Way{Name: "b", Steps: fail("b", "second")})})
	})
	if v := wait(t, reg, "op-l"); v.Error == nil || v.Error.Code != rpc.CodeTimeout || v.Error.Message != "second" {
		t.Fatalf("final: %+v", v)
	}

	rec = &recorder{}
	started := make(chan struct{})
	slow := rec.steps("slow")
	slow[0].Do = func(ctx context.Context) error { close(started); <-ctx.Done(); return ctx.Err() }
	reg.Begin(context.Background(), "op-c", "test", "", func(ctx context.Context, p *Progress) (any, error) {
		return nil, p.Run(ctx, []Step{FirstOf(Way{Name: "a", Steps: slow}, Way{Name: "b", Steps: rec.steps("b")})})
	})
	<-started
	reg.Cancel(context.Background(), "op-c")
	v := wait(t, reg, "op-c")
	if v.State != api.OpCanceled || slices.Contains(rec.log, "do b") {
		t.Fatalf("canceled: %+v, log %v", v, rec.log)
	}
}

// A Stages step runs steps of its own with the operation's Progress:
// they are listed as stages, in order, and the step itself is none; a
// later failure undoes it.
func TestStagesStepListsItsOwnSteps(t *testing.T) {
	reg := NewRegistry(nil)
	rec := &recorder{}
	var steps []Step
	reg.Begin(context.Background(), "op-s", "test", "", func(ctx context.Context, p *Progress) (any, error) {
		steps = append(rec.steps("base"), Step{Name: "boot", Stages: true,
			Do:   func(ctx context.Context) error { return p.Run(ctx, rec.steps("launch", "agent")) },
			Undo: func(context.Context) error { rec.add("undo boot"); return nil }},
			Step{Name: "fail", Do: func(context.Context) error { return errors.New("no") }})
		return nil, p.Run(ctx, steps)
	})
	v := wait(t, reg, "op-s")
	var names []string
	for _, st := range v.Stages {
		names = append(names, st.Name)
	}
	if v.State != api.OpFailed || !slices.Equal(names, []string{"base", "launch", "agent", "fail", "undo boot", "undo base"}) {
		t.Fatalf("stages %v, state %s", names, v.State)
	}
	if !slices.Equal(rec.log, []string{"do base", "do launch", "do agent", "undo boot", "undo base"}) {
		t.Errorf("log: %v", rec.log)
	}
}
