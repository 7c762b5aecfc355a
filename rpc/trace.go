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

// NewTraceID mints a trace id: a ULID's 16 bytes, as 32 lowercase hex
// digits (so trace ids sort by time, as op ids do).
func NewTraceID() string {
	id := ulid.Make()
	return hex.EncodeToString(id[:])
}

// WithTrace returns a context in the trace traceID: every call made with
// it sends the trace in its request.
func WithTrace(ctx context.Context, traceID string) context.Context {
	return context.WithValue(ctx, traceKey{}, traceID)
}

// TraceIDFrom returns the trace id on the context, or "".
func TraceIDFrom(ctx context.Context) string {
	s, _ := ctx.Value(traceKey{}).(string)
	return s
}

// Traceparent is a W3C traceparent of traceID with a new parent span id
// (each request is a span of its own).
func Traceparent(traceID string) string {
	var span [8]byte
	rand.Read(span[:])
	return "00-" + traceID + "-" + hex.EncodeToString(span[:]) + "-01"
}

// ParseTraceparent returns the trace id of a well-formed W3C traceparent
// (version 00: "00-" 32 lowercase hex, not all zero, "-" 16 lowercase
// hex, not all zero, "-" 2 hex), and false for anything else: absent,
// malformed, or of a version this server does not know.
func ParseTraceparent(s string) (traceID string, ok bool) {
	if len(s) != 55 || s[:3] != "00-" || s[35] != '-' || s[52] != '-' {
		return "", false
	}
	trace, span, flags := s[3:35], s[36:52], s[53:]
	if !lowerHex(trace) || !lowerHex(span) || !lowerHex(flags) || allZero(trace) || allZero(span) {
		return "", false
	}
	return trace, true
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
