package logging

import (
	"context"
	"time"
)

// Stage runs one named step of an operation and logs it with its
// duration_ms: "stage completed" at info, or "stage failed" with the error
// at warn. The record carries the op id of ctx, so `banger trace` can lay
// the stages of one command side by side across applets. When ctx has
// Spans (WithSpans), the stage is a span too, and fn runs in it.
func Stage(ctx context.Context, name string, fn func(context.Context) error) error {
	log := From(ctx)
	var end func(error)
	if sp, ok := ctx.Value(spansKey{}).(Spans); ok {
		ctx, end = sp.StartStage(ctx, name)
	}
	start := time.Now()
	log.Debug().Str("stage", name).Msg("stage started")
	err := fn(ctx)
	d := time.Since(start)
	if end != nil {
		end(err)
	}
	if err != nil {
		log.Warn().Str("stage", name).Float64("duration_ms", Millis(d)).Err(err).Msg("stage failed")
		return err
	}
	log.Info().Str("stage", name).Float64("duration_ms", Millis(d)).Msg("stage completed")
	return nil
}

// Spans starts a span for each stage: package telemetry's OpenTelemetry
// export, which puts itself on the contexts of the calls it traces. It is
// an interface here so that logging, which every applet (the guest's
// agent too) links, does not import the SDK.
type Spans interface {
	// StartStage starts the span of stage name, a child of the span
	// ctx is in, and returns ctx in the stage's span and the function
	// that ends it with the stage's error (nil: it succeeded).
	StartStage(ctx context.Context, name string) (context.Context, func(error))
}

type spansKey struct{}

// WithSpans returns ctx whose stages are spans of s.
func WithSpans(ctx context.Context, s Spans) context.Context {
	return context.WithValue(ctx, spansKey{}, s)
}
