package logging

import (
	"context"
	"time"
)

// Stage runs one named step of an operation and logs it with its
// duration_ms: "stage completed" at info, or "stage failed" with the error
// at warn. The record carries the op id of ctx, so `banger trace` can lay
// the stages of one command side by side across applets.
func Stage(ctx context.Context, name string, fn func(context.Context) error) error {
	log := From(ctx)
	start := time.Now()
	log.Debug().Str("stage", name).Msg("stage started")
	err := fn(ctx)
	d := time.Since(start)
	if err != nil {
		log.Warn().Str("stage", name).Float64("duration_ms", Millis(d)).Err(err).Msg("stage failed")
		return err
	}
	log.Info().Str("stage", name).Float64("duration_ms", Millis(d)).Msg("stage completed")
	return nil
}
