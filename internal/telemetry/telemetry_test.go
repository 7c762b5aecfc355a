package telemetry_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"banger/internal/telemetry"
	"banger/internal/telemetry/otlptest"
	"banger/logging"
	"banger/rpc"
	"banger/rpc/rpctest"
)

// serve serves methods on a socket of its own with tel's spans, as the
// daemon and the helper do, until the test ends.
func serve(t *testing.T, name string, tel *telemetry.Tracer, log *rpctest.LogBuffer, methods rpc.Methods) *rpc.Client {
	t.Helper()
	dir, err := os.MkdirTemp("", "tel")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, name+".sock")
	ln, err := rpc.Listen(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	srv := &rpc.Server{Methods: methods, Authorize: rpc.AllowUIDs(uint32(os.Getuid())),
		Logger: logging.New(log, name, zerolog.DebugLevel), Spans: tel}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return &rpc.Client{Socket: sock}
}

func setup(t *testing.T, service string) *telemetry.Tracer {
	t.Helper()
	tel, err := telemetry.Setup(context.Background(), service, "test", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return tel
}

// daemonAndHelper are two servers as the daemon and the helper: the
// daemon's "vm.work" runs a stage "boot" that calls the helper's
// "priv.work", then a stage "fail" that fails with not_found; "whoami"
// answers the trace it runs in.
func daemonAndHelper(t *testing.T, daemonTel, helperTel *telemetry.Tracer, log *rpctest.LogBuffer) *rpc.Client {
	helper := serve(t, "helper", helperTel, log, rpc.Methods{
		"priv.work": func(ctx context.Context, _ json.RawMessage) (any, error) { return true, nil },
	})
	return serve(t, "daemon", daemonTel, log, rpc.Methods{
		"vm.work": func(ctx context.Context, _ json.RawMessage) (any, error) {
			if err := logging.Stage(ctx, "boot", func(ctx context.Context) error {
				return helper.Call(ctx, "priv.work", nil, nil)
			}); err != nil {
				return nil, err
			}
			return nil, logging.Stage(ctx, "fail", func(context.Context) error {
				return rpc.Errorf(rpc.CodeNotFound, "no such thing")
			})
		},
		"whoami": func(ctx context.Context, _ json.RawMessage) (any, error) { return rpc.TraceFrom(ctx), nil },
	})
}

// One command's spans reach the receiver in the command's trace: the
// daemon's call span a child of the caller's span (TRACEPARENT), its
// stages children of it, the helper's call span a child of the stage
// that made the call; a failed stage and call say so. A call that names
// no trace is a root span in the trace its records carry.
func TestSpansOfOneCommand(t *testing.T) {
	recv := otlptest.Start(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", recv.URL)
	daemonTel, helperTel := setup(t, "bangerd"), setup(t, "bangerd-root")
	if daemonTel == nil || helperTel == nil {
		t.Fatal("no tracer with OTEL_EXPORTER_OTLP_ENDPOINT set")
	}
	var log rpctest.LogBuffer
	daemon := daemonAndHelper(t, daemonTel, helperTel, &log)

	const trace, caller = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	ctx := rpc.WithSpan(context.Background(), rpc.Trace{ID: trace, SpanID: caller, Flags: "01"})
	var failed *rpc.ErrorResponse
	if err := daemon.Call(ctx, "vm.work", nil, nil); !errors.As(err, &failed) || failed.Code != rpc.CodeNotFound {
		t.Fatalf("vm.work: %v", err)
	}
	var own rpc.Trace
	if err := daemon.Call(context.Background(), "whoami", nil, &own); err != nil {
		t.Fatal(err)
	}
	for _, tel := range []*telemetry.Tracer{daemonTel, helperTel} {
		if err := tel.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
	}

	byName := map[string]otlptest.Span{}
	for _, s := range recv.Spans() {
		byName[s.Name] = s
	}
	call, boot, fail, priv, whoami := byName["vm.work"], byName["boot"], byName["fail"], byName["priv.work"], byName["whoami"]
	all := otlptest.Describe(recv.Spans())
	for _, c := range []struct {
		what          string
		got           otlptest.Span
		service       string
		trace, parent string
		kind          int32
	}{
		{"the daemon's call", call, "bangerd", trace, caller, 2},
		{"its stage boot", boot, "bangerd", trace, call.SpanID, 1},
		{"its stage fail", fail, "bangerd", trace, call.SpanID, 1},
		{"the helper's call, made in boot", priv, "bangerd-root", trace, boot.SpanID, 2},
		{"a call with no trace of its caller", whoami, "bangerd", own.ID, "", 2},
	} {
		g := c.got
		if g.SpanID == "" || g.Service != c.service || g.TraceID != c.trace || g.ParentSpanID != c.parent || g.Kind != c.kind {
			t.Errorf("%s: %+v, want service %s, trace %s, parent %q, kind %d; all:\n%s", c.what, g, c.service, c.trace, c.parent, c.kind, all)
		}
	}
	if !strings.HasPrefix(call.Attributes["banger.op_id"], "op-") || call.Attributes["rpc.method"] != "vm.work" || !call.ParentRemote {
		t.Errorf("the call span's attributes %v, parent remote %v", call.Attributes, call.ParentRemote)
	}
	if call.StatusCode != 2 || call.Attributes["banger.error_code"] != rpc.CodeNotFound || fail.StatusCode != 2 || boot.StatusCode == 2 {
		t.Errorf("statuses: call %d %v, fail %d, boot %d", call.StatusCode, call.Attributes, fail.StatusCode, boot.StatusCode)
	}
	if own.SpanID != whoami.SpanID {
		t.Errorf("the handler stands at span %q, its span is %q", own.SpanID, whoami.SpanID)
	}
	if !strings.Contains(log.String(), `"trace_id":"`+own.ID+`"`) {
		t.Errorf("no record in the root span's trace %s:\n%s", own.ID, log.String())
	}
}

// With the variables unset there is no tracer; with an endpoint but
// OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none, nothing reaches it.
func TestNothingIsSentUnlessAsked(t *testing.T) {
	for _, v := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED"} {
		t.Setenv(v, "")
	}
	if tel := setup(t, "bangerd"); tel != nil {
		t.Fatal("a tracer with no OTEL_* variable set")
	}
	recv := otlptest.Start(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", recv.URL)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
	for _, off := range [][2]string{{"OTEL_SDK_DISABLED", "true"}, {"OTEL_TRACES_EXPORTER", "none"}} {
		t.Setenv(off[0], off[1])
		tel := setup(t, "bangerd")
		var log rpctest.LogBuffer
		daemon := daemonAndHelper(t, tel, tel, &log)
		daemon.Call(rpc.WithTrace(context.Background(), rpc.NewTraceID()), "vm.work", nil, nil)
		tel.Shutdown(context.Background())
		t.Setenv(off[0], "")
	}
	// What was sent would have arrived by now: the batch goes out every
	// 10 ms, and Shutdown flushes it.
	time.Sleep(100 * time.Millisecond)
	if n := recv.Requests(); n != 0 {
		t.Errorf("the receiver got %d requests", n)
	}
}

func TestEnabled(t *testing.T) {
	for _, c := range []struct {
		env     map[string]string
		on, err bool
	}{
		{nil, false, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, true, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, true, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "TRUE"}, false, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"}, false, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "zipkin"}, false, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, false, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, true, false},
	} {
		on, err := telemetry.Enabled(func(k string) string { return c.env[k] })
		if on != c.on || (err != nil) != c.err {
			t.Errorf("%v: on %v, error %v", c.env, on, err)
		}
	}
}

// benchCalls is b.N calls of a method that runs one stage, on a server
// with tel's spans (nil: none), from a caller in a trace.
func benchCalls(b *testing.B, tel *telemetry.Tracer) {
	var log rpctest.LogBuffer
	dir, err := os.MkdirTemp("", "tel")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	ln, err := rpc.Listen(filepath.Join(dir, "d.sock"), 0o600)
	if err != nil {
		b.Fatal(err)
	}
	srv := &rpc.Server{Authorize: rpc.AllowUIDs(uint32(os.Getuid())), Logger: logging.New(&log, "bangerd", zerolog.InfoLevel), Spans: tel,
		Methods: rpc.Methods{"work": func(ctx context.Context, _ json.RawMessage) (any, error) {
			return nil, logging.Stage(ctx, "step", func(context.Context) error { return nil })
		}}}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Shutdown(context.Background()) })
	c := &rpc.Client{Socket: filepath.Join(dir, "d.sock")}
	ctx := rpc.WithSpan(context.Background(), rpc.Trace{ID: rpc.NewTraceID(), SpanID: rpc.NewSpanID()})
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Call(ctx, "work", nil, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCallAndStage is a call that runs one stage, with no export.
func BenchmarkCallAndStage(b *testing.B) { benchCalls(b, nil) }

// BenchmarkCallAndStageExported is the same call with its two spans
// exported to a local receiver (batches every 5 s, the default).
func BenchmarkCallAndStageExported(b *testing.B) {
	recv := otlptest.Start(b)
	b.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", recv.URL)
	tel, err := telemetry.Setup(context.Background(), "bangerd", "bench", zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tel.Shutdown(context.Background()) })
	benchCalls(b, tel)
}
