package client

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"banger/internal/api"
)

// pollEvery is how often a followed operation is read while it runs: long
// enough to cost nothing, short enough for a live elapsed time.
const pollEvery = 150 * time.Millisecond

// stageWriter shows an operation's stages as they happen, on stderr so a
// command's own output is never mixed with banger's: on a terminal, one
// line per stage updated in place with its elapsed time; otherwise one
// plain line per finished stage.
type stageWriter struct {
	w       io.Writer
	tty     bool
	printed int  // stages whose final line is written
	live    bool // a running stage's line is on screen, without newline
}

func newStageWriter(w io.Writer, quiet bool) *stageWriter {
	if quiet {
		return &stageWriter{w: io.Discard}
	}
	f, ok := w.(*os.File)
	return &stageWriter{w: w, tty: ok && term.IsTerminal(int(f.Fd()))}
}

func (sw *stageWriter) update(op api.Operation) {
	for sw.printed < len(op.Stages) {
		st := op.Stages[sw.printed]
		if st.State == api.StageRunning {
			if sw.tty {
				fmt.Fprintf(sw.w, "\r\033[K  … %s  %s", st.Name, fmtMillis(st.DurationMS))
				if st.Detail != "" {
					fmt.Fprintf(sw.w, "  %s", st.Detail)
				}
				sw.live = true
			}
			return
		}
		mark := map[string]string{api.StageDone: "✓", api.StageFailed: "✗", api.StageUndone: "↺"}[st.State]
		// What a finished stage says: its error, else its last detail
		// (a fall back's reason, a build's percentage).
		say := st.Error
		if say == "" {
			say = st.Detail
		}
		if sw.tty {
			line := fmt.Sprintf("\r\033[K  %s %s  %s", mark, st.Name, fmtMillis(st.DurationMS))
			if say != "" {
				line += "  " + say
			}
			fmt.Fprintln(sw.w, line)
		} else {
			line := fmt.Sprintf("%s %s in %s", st.Name, st.State, fmtMillis(st.DurationMS))
			if say != "" {
				line += ": " + say
			}
			fmt.Fprintln(sw.w, line)
		}
		sw.live = false
		sw.printed++
	}
}

// follow polls the operation until it ends, showing its stages. Ctrl-C
// (ctx canceled) cancels the operation and waits for its undo, so
// nothing is left half made.
func follow(ctx context.Context, s *target, op api.Operation, sw *stageWriter) (api.Operation, error) {
	// The operation's id is the op id of its log records: `banger trace`
	// shows where the time went.
	fmt.Fprintf(sw.w, "%s %s (%s)\n", op.Kind, op.Target, op.ID)
	sw.update(op)
	for !op.Done() {
		wait := api.OperationWait{ID: op.ID, TimeoutMS: int(pollEvery / time.Millisecond)}
		if !sw.tty {
			wait.TimeoutMS = 1000
		}
		next, err := s.running().WaitOperation(ctx, wait)
		if ctx.Err() != nil {
			return cancelAndWait(s, op, sw)
		}
		if err != nil {
			return op, err
		}
		op = next
		sw.update(op)
	}
	return op, nil
}

// beginner begins an operation: a *Begin method of the typed client,
// with its params (beginWith).
type beginner func(ctx context.Context, d api.Client) (api.Operation, error)

// beginWith is the beginner that calls begin with p.
func beginWith[P any](begin func(api.Client, context.Context, P) (api.Operation, error), p P) beginner {
	return func(ctx context.Context, d api.Client) (api.Operation, error) { return begin(d, ctx, p) }
}

// runOperation begins an operation, follows its stages on stderr (unless
// --quiet or --json) and decodes its result.
func runOperation[T any](c *cli.Context, s *target, begin beginner) (T, api.Operation, *stageWriter, error) {
	var result T
	sw := newStageWriter(c.App.ErrWriter, c.Bool("quiet") || c.Bool("json"))
	op, err := begin(c.Context, s.daemon())
	if err != nil {
		return result, op, sw, err
	}
	op, err = follow(c.Context, s, op, sw)
	if err != nil {
		return result, op, sw, err
	}
	if err := operationError(op); err != nil {
		return result, op, sw, err
	}
	err = decodeResult(op, &result)
	return result, op, sw, err
}

func cancelAndWait(s *target, op api.Operation, sw *stageWriter) (api.Operation, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if sw.live {
		fmt.Fprintln(sw.w)
		sw.live = false
	}
	fmt.Fprintf(sw.w, "canceling %s ...\n", op.ID)
	op, err := s.running().CancelOperation(ctx, api.OperationID{ID: op.ID})
	if err != nil {
		return op, err
	}
	for !op.Done() {
		if op, err = s.running().WaitOperation(ctx, api.OperationWait{ID: op.ID, TimeoutMS: 1000}); err != nil {
			return op, err
		}
		sw.update(op)
	}
	return op, nil
}

// operationError is the error of an operation that did not succeed.
func operationError(op api.Operation) error {
	if op.State == api.OpSucceeded {
		return nil
	}
	if op.Error != nil {
		return op.Error
	}
	return fmt.Errorf("operation %s %s", op.ID, op.State)
}

func fmtMillis(ms float64) string {
	d := time.Duration(ms * float64(time.Millisecond))
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	default:
		return d.Round(10 * time.Millisecond).String()
	}
}
