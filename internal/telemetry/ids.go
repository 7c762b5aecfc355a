package telemetry

import (
	"context"
	"encoding/binary"
	"math/rand/v2"

	"go.opentelemetry.io/otel/trace"

	"banger/rpc"
)

// traceIDs is the SDK's IDGenerator for banger: a root span (a call
// whose request named no parent span) takes the trace id on its context
// (rpc.TraceFrom), the one the call's records carry, instead of a random
// one; span ids are random.
type traceIDs struct{}

func (traceIDs) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	tid, err := trace.TraceIDFromHex(rpc.TraceIDFrom(ctx))
	for err != nil || !tid.IsValid() {
		binary.NativeEndian.PutUint64(tid[:8], rand.Uint64())
		binary.NativeEndian.PutUint64(tid[8:], rand.Uint64())
		err = nil
	}
	return tid, newSpanID()
}

func (traceIDs) NewSpanID(context.Context, trace.TraceID) trace.SpanID { return newSpanID() }

func newSpanID() trace.SpanID {
	var sid trace.SpanID
	for !sid.IsValid() {
		binary.NativeEndian.PutUint64(sid[:], rand.Uint64())
	}
	return sid
}
