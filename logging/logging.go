// Package logging builds the one zerolog JSON logger every banger applet
// writes with, and carries a logger with the current op id on contexts so
// that each record written while serving an RPC has op_id and method
// without each call site adding them.
//
// Records: time (RFC 3339, UTC, microseconds), level, applet, msg, and the
// fields of the moment (op_id, method, stage, duration_ms, code).
package logging

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// TimeFormat is RFC 3339 with a fixed six-digit fraction, so records sort
// as text and sub-millisecond stages stay apart.
const TimeFormat = "2006-01-02T15:04:05.000000Z07:00"

// EnvLevel names the environment variable that sets the level when no
// --log-level flag is given.
const EnvLevel = "BANGER_LOG_LEVEL"

// New returns the JSON logger of one applet writing to w at level.
//
// zerolog keeps its time format, clock and message key in package
// variables; the first New sets them, once, so every applet in the binary
// writes the same format whichever one starts first, and a later New does
// not write them again while other goroutines log (a data race).
func New(w io.Writer, applet string, level zerolog.Level) zerolog.Logger {
	configure.Do(func() {
		zerolog.TimeFieldFormat = TimeFormat
		zerolog.TimestampFunc = utcNow
		zerolog.MessageFieldName = "msg"
	})
	return zerolog.New(w).Level(level).With().Timestamp().Str("applet", applet).Logger()
}

// configure guards the one write of zerolog's package variables.
var configure sync.Once

func utcNow() time.Time { return time.Now().UTC() }

// ParseLevel parses a level name (trace, debug, info, warn, error; any
// case); empty means info. zerolog's own parser also takes numbers and
// fatal, panic and disabled, which are not levels an operator should set.
func ParseLevel(s string) (zerolog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "info":
		return zerolog.InfoLevel, nil
	case "trace":
		return zerolog.TraceLevel, nil
	case "debug":
		return zerolog.DebugLevel, nil
	case "warn":
		return zerolog.WarnLevel, nil
	case "error":
		return zerolog.ErrorLevel, nil
	}
	return zerolog.InfoLevel, fmt.Errorf("unknown log level %q (want trace, debug, info, warn or error)", s)
}

// WithOp returns ctx carrying a logger derived from base that stamps op_id
// and method on every record.
func WithOp(ctx context.Context, base zerolog.Logger, opID, method string) context.Context {
	c := base.With().Str("op_id", opID)
	if method != "" {
		c = c.Str("method", method)
	}
	l := c.Logger()
	return l.WithContext(ctx)
}

// WithLogger returns ctx carrying l, for work that is not an RPC.
func WithLogger(ctx context.Context, l zerolog.Logger) context.Context {
	return l.WithContext(ctx)
}

// From returns the logger on ctx. A context without one yields a logger
// that discards, never a nil or a global default: applets always attach
// theirs at the top.
func From(ctx context.Context) *zerolog.Logger {
	return zerolog.Ctx(ctx)
}

// Millis converts d to the float milliseconds of duration_ms fields.
func Millis(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000
}
