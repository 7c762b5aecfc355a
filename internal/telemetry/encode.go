package telemetry

import (
	"encoding/binary"
	"math"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// The OTLP trace protobuf (opentelemetry-proto, collector/trace/v1 and
// trace/v1), written by hand: the field numbers below are the .proto
// files'. The tests decode what this writes with the official generated
// types.

// Wire types.
const (
	wireVarint  = 0
	wireFixed64 = 1
	wireBytes   = 2
	wireFixed32 = 5
)

func appendTag(b []byte, field int, wire uint64) []byte {
	return binary.AppendUvarint(b, uint64(field)<<3|wire)
}

func appendBytes(b []byte, field int, p []byte) []byte {
	b = appendTag(b, field, wireBytes)
	b = binary.AppendUvarint(b, uint64(len(p)))
	return append(b, p...)
}

// appendString omits an empty string, as proto3 does.
func appendString(b []byte, field int, s string) []byte {
	if s == "" {
		return b
	}
	b = appendTag(b, field, wireBytes)
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// appendVarint omits a zero, as proto3 does.
func appendVarint(b []byte, field int, v uint64) []byte {
	if v == 0 {
		return b
	}
	return binary.AppendUvarint(appendTag(b, field, wireVarint), v)
}

func appendFixed64(b []byte, field int, v uint64) []byte {
	return binary.LittleEndian.AppendUint64(appendTag(b, field, wireFixed64), v)
}

func appendFixed32(b []byte, field int, v uint32) []byte {
	return binary.LittleEndian.AppendUint32(appendTag(b, field, wireFixed32), v)
}

// encodeExport is the ExportTraceServiceRequest of spans: one
// ResourceSpans per resource, one ScopeSpans per scope in it, in the
// order they first come.
func encodeExport(spans []sdktrace.ReadOnlySpan) []byte {
	type group struct {
		res    *resource.Resource
		scopes []instrumentation.Scope
		spans  map[instrumentation.Scope][]sdktrace.ReadOnlySpan
	}
	var groups []*group
	byRes := map[*resource.Resource]*group{}
	for _, s := range spans {
		g := byRes[s.Resource()]
		if g == nil {
			g = &group{res: s.Resource(), spans: map[instrumentation.Scope][]sdktrace.ReadOnlySpan{}}
			byRes[s.Resource()] = g
			groups = append(groups, g)
		}
		sc := s.InstrumentationScope()
		sc.Attributes = attribute.Set{} // not comparable as a key; written from the span below
		if _, ok := g.spans[sc]; !ok {
			g.scopes = append(g.scopes, sc)
		}
		g.spans[sc] = append(g.spans[sc], s)
	}
	var out []byte
	for _, g := range groups {
		var rs []byte
		rs = appendBytes(rs, 1, encodeResource(g.res)) // resource
		for _, sc := range g.scopes {
			ss := g.spans[sc]
			var scopeSpans []byte
			scopeSpans = appendBytes(scopeSpans, 1, encodeScope(ss[0].InstrumentationScope())) // scope
			for _, s := range ss {
				scopeSpans = appendBytes(scopeSpans, 2, encodeSpan(s)) // spans
			}
			scopeSpans = appendString(scopeSpans, 3, sc.SchemaURL)
			rs = appendBytes(rs, 2, scopeSpans) // scope_spans
		}
		rs = appendString(rs, 3, g.res.SchemaURL())
		out = appendBytes(out, 1, rs) // resource_spans
	}
	return out
}

func encodeResource(r *resource.Resource) []byte {
	var b []byte
	for _, kv := range r.Attributes() {
		b = appendBytes(b, 1, encodeKeyValue(kv))
	}
	return b
}

func encodeScope(s instrumentation.Scope) []byte {
	b := appendString(nil, 1, s.Name)
	b = appendString(b, 2, s.Version)
	for _, kv := range s.Attributes.ToSlice() {
		b = appendBytes(b, 3, encodeKeyValue(kv))
	}
	return b
}

// OTLP's span flags: the low byte is the W3C trace flags; these say
// whether the parent is remote.
const (
	flagHasIsRemote = 0x100
	flagIsRemote    = 0x200
)

func encodeSpan(s sdktrace.ReadOnlySpan) []byte {
	sc, parent := s.SpanContext(), s.Parent()
	tid, sid := sc.TraceID(), sc.SpanID()
	b := appendBytes(nil, 1, tid[:])
	b = appendBytes(b, 2, sid[:])
	b = appendString(b, 3, sc.TraceState().String())
	if parent.SpanID().IsValid() {
		psid := parent.SpanID()
		b = appendBytes(b, 4, psid[:])
	}
	b = appendString(b, 5, s.Name())
	b = appendVarint(b, 6, uint64(s.SpanKind())) // trace.SpanKind's values are OTLP's
	b = appendFixed64(b, 7, uint64(s.StartTime().UnixNano()))
	b = appendFixed64(b, 8, uint64(s.EndTime().UnixNano()))
	for _, kv := range s.Attributes() {
		b = appendBytes(b, 9, encodeKeyValue(kv))
	}
	b = appendVarint(b, 10, uint64(s.DroppedAttributes()))
	for _, e := range s.Events() {
		b = appendBytes(b, 11, encodeEvent(e))
	}
	b = appendVarint(b, 12, uint64(s.DroppedEvents()))
	for _, l := range s.Links() {
		b = appendBytes(b, 13, encodeLink(l))
	}
	b = appendVarint(b, 14, uint64(s.DroppedLinks()))
	b = appendBytes(b, 15, encodeStatus(s.Status()))
	flags := uint32(sc.TraceFlags()) | flagHasIsRemote
	if parent.IsRemote() {
		flags |= flagIsRemote
	}
	return appendFixed32(b, 16, flags)
}

func encodeEvent(e sdktrace.Event) []byte {
	b := appendFixed64(nil, 1, uint64(e.Time.UnixNano()))
	b = appendString(b, 2, e.Name)
	for _, kv := range e.Attributes {
		b = appendBytes(b, 3, encodeKeyValue(kv))
	}
	return appendVarint(b, 4, uint64(e.DroppedAttributeCount))
}

func encodeLink(l sdktrace.Link) []byte {
	tid, sid := l.SpanContext.TraceID(), l.SpanContext.SpanID()
	b := appendBytes(nil, 1, tid[:])
	b = appendBytes(b, 2, sid[:])
	b = appendString(b, 3, l.SpanContext.TraceState().String())
	for _, kv := range l.Attributes {
		b = appendBytes(b, 4, encodeKeyValue(kv))
	}
	b = appendVarint(b, 5, uint64(l.DroppedAttributeCount))
	flags := uint32(l.SpanContext.TraceFlags()) | flagHasIsRemote
	if l.SpanContext.IsRemote() {
		flags |= flagIsRemote
	}
	return appendFixed32(b, 6, flags)
}

// encodeStatus maps the SDK's codes (Unset 0, Error 1, Ok 2) to OTLP's
// (UNSET 0, OK 1, ERROR 2).
func encodeStatus(st sdktrace.Status) []byte {
	b := appendString(nil, 2, st.Description)
	switch st.Code {
	case codes.Ok:
		b = appendVarint(b, 3, 1)
	case codes.Error:
		b = appendVarint(b, 3, 2)
	}
	return b
}

func encodeKeyValue(kv attribute.KeyValue) []byte {
	b := appendString(nil, 1, string(kv.Key))
	return appendBytes(b, 2, encodeValue(kv.Value))
}

// encodeValue is an AnyValue: a oneof, so even a zero value is written.
func encodeValue(v attribute.Value) []byte {
	var b []byte
	switch v.Type() {
	case attribute.STRING:
		s := v.AsString()
		b = appendTag(b, 1, wireBytes)
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	case attribute.BOOL:
		n := uint64(0)
		if v.AsBool() {
			n = 1
		}
		b = binary.AppendUvarint(appendTag(b, 2, wireVarint), n)
	case attribute.INT64:
		b = binary.AppendUvarint(appendTag(b, 3, wireVarint), uint64(v.AsInt64()))
	case attribute.FLOAT64:
		b = appendFixed64(b, 4, math.Float64bits(v.AsFloat64()))
	case attribute.BOOLSLICE:
		b = appendArray(b, v.AsBoolSlice(), attribute.BoolValue)
	case attribute.INT64SLICE:
		b = appendArray(b, v.AsInt64Slice(), attribute.Int64Value)
	case attribute.FLOAT64SLICE:
		b = appendArray(b, v.AsFloat64Slice(), attribute.Float64Value)
	case attribute.STRINGSLICE:
		b = appendArray(b, v.AsStringSlice(), attribute.StringValue)
	default:
		// A type OTLP has and this encoder does not write (bytes, maps):
		// its text form, rather than nothing.
		b = appendString(b, 1, v.Emit())
	}
	return b
}

// appendArray writes an ArrayValue of xs (field 5 of AnyValue).
func appendArray[T any](b []byte, xs []T, value func(T) attribute.Value) []byte {
	var arr []byte
	for _, x := range xs {
		arr = appendBytes(arr, 1, encodeValue(value(x)))
	}
	return appendBytes(b, 5, arr)
}
