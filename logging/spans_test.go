package logging_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/rs/zerolog"

	"banger/logging"
)

type spanKey struct{}

// fakeSpans records each stage's span: its name, and how it ended.
type fakeSpans struct{ ended []string }

func (f *fakeSpans) StartStage(ctx context.Context, name string) (context.Context, func(error)) {
	return context.WithValue(ctx, spanKey{}, name), func(err error) {
		f.ended = append(f.ended, name+" "+fmt.Sprint(err))
	}
}

// With Spans on its context, a stage is a span: its step runs in it
// (nested stages are its children), and it ends with the step's error.
func TestStageSpans(t *testing.T) {
	var buf bytes.Buffer
	ctx := logging.WithOp(context.Background(), logging.New(&buf, "bangerd", zerolog.InfoLevel), testOpID, "vm.create.begin")
	spans := &fakeSpans{}
	ctx = logging.WithSpans(ctx, spans)
	boom := errors.New("no disk")
	err := logging.Stage(ctx, "outer", func(ctx context.Context) error {
		if ctx.Value(spanKey{}) != "outer" {
			t.Error("the step does not run in its stage's span")
		}
		logging.Stage(ctx, "inner", func(context.Context) error { return nil })
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if want := []string{"inner <nil>", "outer no disk"}; len(spans.ended) != 2 || spans.ended[0] != want[0] || spans.ended[1] != want[1] {
		t.Errorf("spans ended %q, want %q", spans.ended, want)
	}
}
