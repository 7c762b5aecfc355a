package logging

import (
	"io"

	"github.com/rs/zerolog"
)

// NewRelay returns the logger of records another applet made and this one
// writes on its behalf (the guest agent's, in the daemon's log): New's
// format, with the other applet's name, and no timestamp of its own, as
// each relayed record brings its time.
func NewRelay(w io.Writer, applet string, level zerolog.Level) zerolog.Logger {
	New(io.Discard, applet, level) // zerolog's format, set once
	return zerolog.New(w).Level(level).With().Str("applet", applet).Logger()
}
