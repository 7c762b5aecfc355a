package rpc

import (
	"context"
	"crypto/rand"
	"encoding/hex"

	"github.com/oklog/ulid/v2"
)

// Traces (PROTOCOL.md, Traces): every request of one CLI command carries
// the command's trace in W3C Trace Context form, in the request's
// optional traceparent field. A server takes the trace of a well-formed
// traceparent and starts one of its own otherwise, never refusing a
// request for it; every record of the call, and every call it makes on
// (the daemon's to the helper and to the agent), carries the trace on.

type traceKey struct{}

// Trace is where a context stands in its trace: the trace id, the span
// that calls made with the context are children of (the caller's span,
// or the span of the work in hand when spans are exported), and the
// W3C trace flags, so the caller's sampling decision travels on.
type Trace struct {
	ID     string // 32 lowercase hex digits
	SpanID string // 16 lowercase hex digits; "": none known
	Flags  string // 2 lowercase hex digits; "": 01 (sampled)
}

// NewTraceID mints a trace id: a ULID's 16 bytes, as 32 lowercase hex
// digits (so trace ids sort by time, as op ids do).
func NewTraceID() string {
	id := ulid.Make()
	return hex.EncodeToString(id[:])
}

// NewSpanID mints a span id: 16 random lowercase hex digits, not all zero.
func NewSpanID() string {
	var span [8]byte
	for span == [8]byte{} {
		rand.Read(span[:])
	}
	return hex.EncodeToString(span[:])
}

// WithTrace returns a context in the trace traceID, with no span: every
// call made with it sends the trace in its request.
func WithTrace(ctx context.Context, traceID string) context.Context {
	return WithSpan(ctx, Trace{ID: traceID})
}

// WithSpan returns a context at t: calls made with it send t's trace,
// with t.SpanID as their parent span.
func WithSpan(ctx context.Context, t Trace) context.Context {
	return context.WithValue(ctx, traceKey{}, t)
}

// TraceFrom returns the trace on the context (the zero Trace if none).
func TraceFrom(ctx context.Context) Trace {
	t, _ := ctx.Value(traceKey{}).(Trace)
	return t
}

// TraceIDFrom returns the trace id on the context, or "".
func TraceIDFrom(ctx context.Context) string {
	return TraceFrom(ctx).ID
}

// Traceparent is t as a W3C traceparent. With no span id, it names a new
// one (the request is a span of its own).
func (t Trace) Traceparent() string {
	span, flags := t.SpanID, t.Flags
	if span == "" {
		span = NewSpanID()
	}
	if flags == "" {
		flags = "01"
	}
	return "00-" + t.ID + "-" + span + "-" + flags
}

// Traceparent is a W3C traceparent of traceID with a new parent span id
// (each request is a span of its own).
func Traceparent(traceID string) string {
	return Trace{ID: traceID}.Traceparent()
}

// ParseTraceparent returns the trace id of a well-formed W3C traceparent
// (see ParseTrace), and false for anything else.
func ParseTraceparent(s string) (traceID string, ok bool) {
	t, ok := ParseTrace(s)
	return t.ID, ok
}

// ParseTrace returns the trace of a well-formed W3C traceparent (version
// 00: "00-" 32 lowercase hex, not all zero, "-" 16 lowercase hex, not
// all zero, "-" 2 hex), and false for anything else: absent, malformed,
// or of a version this server does not know.
func ParseTrace(s string) (Trace, bool) {
	if len(s) != 55 || s[:3] != "00-" || s[35] != '-' || s[52] != '-' {
		return Trace{}, false
	}
	trace, span, flags := s[3:35], s[36:52], s[53:]
	if !lowerHex(trace) || !lowerHex(span) || !lowerHex(flags) || allZero(trace) || allZero(span) {
		return Trace{}, false
	}
	return Trace{ID: trace, SpanID: span, Flags: flags}, true
}

// ValidTraceID reports whether s is a trace id: 32 lowercase hex digits,
// not all zero.
func ValidTraceID(s string) bool { return len(s) == 32 && lowerHex(s) && !allZero(s) }

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func allZero(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '0' {
			return false
		}
	}
	return true
}
