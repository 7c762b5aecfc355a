// Package telemetry exports banger's spans over OTLP/HTTP with the
// OpenTelemetry SDK when the standard OTEL_* environment asks for it: one
// span per call a server serves (rpc.Spans) and one per stage
// (logging.Spans), in banger's own traces. A span's trace id is the one on
// its context (rpc.TraceFrom), the one every record of the call carries,
// and its parent the span its caller named in the request's traceparent,
// so banger's work shows inside a CI system's or an agent framework's
// trace.
//
// With the variables unset, Setup returns a nil *Tracer: nothing is
// started, sent, or paid for. Only the daemon and the root helper set it
// up; the guest's agent exports nothing, and rpc and logging know this
// package only through their Spans interfaces, so they (and the agent)
// do not import the SDK.
package telemetry

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"banger/logging"
	"banger/rpc"
)

// Tracer starts banger's spans and exports them. A nil *Tracer starts
// none, at the cost of a nil check, so callers need not ask whether
// export is on.
type Tracer struct {
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
}

// Setup returns the Tracer of the applet service (its service.name,
// which OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override) at
// version, or nil when the environment asks for no export (Enabled). The
// exporter (otlp.go) reads the OTEL_EXPORTER_OTLP_* variables, the SDK's
// batch processor the OTEL_BSP_* ones and its sampler
// OTEL_TRACES_SAMPLER. Export errors are written to log as warnings.
// Shut the Tracer down to flush its last spans.
func Setup(ctx context.Context, service, version string, log zerolog.Logger) (*Tracer, error) {
	on, err := Enabled(os.Getenv)
	if !on || err != nil {
		return nil, err
	}
	exp, err := newExporter(ctx, os.Getenv)
	if err != nil {
		return nil, err
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", service), attribute.String("service.version", version)),
		resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	// The SDK reports export failures only to its process-wide handler;
	// without one they go to the standard logger, outside banger's log.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn().Err(err).Msg("telemetry export failed")
	}))
	p := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res), sdktrace.WithIDGenerator(traceIDs{}))
	return &Tracer{provider: p, tracer: p.Tracer("banger")}, nil
}

// Enabled reports whether getenv's OTEL_* variables ask for span export:
// an OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or OTEL_TRACES_EXPORTER=otlp, and
// neither OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none. An
// exporter or protocol banger does not have (it sends OTLP over
// http/protobuf only) is an error.
func Enabled(getenv func(string) string) (bool, error) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false, nil
	}
	exporter := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER"))
	switch exporter {
	case "none":
		return false, nil
	case "", "otlp":
	default:
		return false, fmt.Errorf("OTEL_TRACES_EXPORTER=%s: banger exports traces with otlp only", exporter)
	}
	protocol := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	if protocol != "" && protocol != "http/protobuf" {
		return false, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%s: banger sends OTLP over http/protobuf only", protocol)
	}
	return exporter == "otlp" || getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "", nil
}

// Shutdown exports the spans not yet sent and stops the exporter, within
// ctx's deadline. A nil Tracer has nothing to do.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.provider.Shutdown(ctx)
}

func endNothing(string) {}

// StartCall starts the server span of one call to method (rpc.Spans):
// its parent is the caller's span, remote; its stages (WithSpans) and the
// calls it makes on are its children.
func (t *Tracer) StartCall(ctx context.Context, method string) (context.Context, func(code string)) {
	if t == nil {
		return ctx, endNothing
	}
	ctx, span := t.start(ctx, method, true, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("rpc.method", method), attribute.String("banger.op_id", rpc.OpIDFrom(ctx))))
	ctx = logging.WithSpans(ctx, t)
	return ctx, func(code string) {
		if code != "" {
			span.SetAttributes(attribute.String("banger.error_code", code))
			span.SetStatus(codes.Error, code)
		}
		span.End()
	}
}

// StartStage starts the span of one stage (logging.Spans), a child of
// the span ctx is in.
func (t *Tracer) StartStage(ctx context.Context, name string) (context.Context, func(error)) {
	if t == nil {
		return ctx, func(error) {}
	}
	ctx, span := t.start(ctx, name, false,
		trace.WithAttributes(attribute.String("banger.stage", name), attribute.String("banger.op_id", rpc.OpIDFrom(ctx))))
	return ctx, func(err error) {
		if err != nil {
			span.SetAttributes(attribute.String("banger.error_code", rpc.CodeOf(err)))
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
}

// start starts span name whose parent is the span ctx stands at
// (rpc.TraceFrom: the caller's when remote, else the work in hand's),
// and returns ctx standing at the new span, so that records, stages and
// the calls made on all carry it.
func (t *Tracer) start(ctx context.Context, name string, remote bool, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	ctx = trace.ContextWithSpanContext(ctx, parentOf(rpc.TraceFrom(ctx), remote))
	ctx, span := t.tracer.Start(ctx, name, opts...)
	sc := span.SpanContext()
	return rpc.WithSpan(ctx, rpc.Trace{ID: sc.TraceID().String(), SpanID: sc.SpanID().String(), Flags: sc.TraceFlags().String()}), span
}

// parentOf is the span context of tc's span, invalid (no parent: the
// span is a root, in tc's trace by traceIDs) when tc has none.
func parentOf(tc rpc.Trace, remote bool) trace.SpanContext {
	tid, err1 := trace.TraceIDFromHex(tc.ID)
	sid, err2 := trace.SpanIDFromHex(tc.SpanID)
	if err := errors.Join(err1, err2); err != nil {
		return trace.SpanContext{}
	}
	flags := trace.FlagsSampled
	if b, err := hex.DecodeString(tc.Flags); err == nil && len(b) == 1 {
		flags = trace.TraceFlags(b[0])
	}
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: flags, Remote: remote})
}

// FlushTimeout bounds the export of the last spans when an applet stops.
const FlushTimeout = 5 * time.Second

// Close exports the spans not yet sent (within FlushTimeout) and stops
// the exporter, writing a failure to log: an applet's last step, so its
// last calls are in the trace. A nil Tracer has nothing to do.
func (t *Tracer) Close(log zerolog.Logger) {
	if t == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), FlushTimeout)
	defer cancel()
	if err := t.Shutdown(ctx); err != nil {
		log.Warn().Err(err).Msg("the last spans were not all exported")
	}
}
