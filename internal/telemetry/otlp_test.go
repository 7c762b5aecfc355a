package telemetry

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"

	"banger/internal/telemetry/otlptest"
)

func TestOTLPConfig(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		url  string
		gzip bool
		err  bool
	}{
		{nil, "http://localhost:4318/v1/traces", false, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}, "http://c:4318/v1/traces", false, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c/otlp"}, "https://c/otlp/v1/traces", false, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x"}, "http://t/x", false, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4318"}, "", false, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}, "http://localhost:4318/v1/traces", true, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "none"}, "http://localhost:4318/v1/traces", false, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "", false, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "", false, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"}, "", false, true},
	} {
		cfg, err := readOTLPConfig(func(k string) string { return c.env[k] })
		if (err != nil) != c.err || (err == nil && (cfg.url != c.url || cfg.gzip != c.gzip)) {
			t.Errorf("%v: %+v, %v", c.env, cfg, err)
		}
	}
	cfg, err := readOTLPConfig(func(k string) string {
		return map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t0k, x-team = ci ,bad", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500"}[k]
	})
	if err != nil || cfg.headers.Get("Authorization") != "Bearer t0k" || cfg.headers.Get("X-Team") != "ci" || len(cfg.headers) != 2 || cfg.timeout != 2500*time.Millisecond {
		t.Errorf("headers and timeout: %+v, %v", cfg, err)
	}
}

// What the exporter writes, the official protobuf types read: every
// attribute type, the resource's service name from OTEL_SERVICE_NAME,
// gzip, the headers; a collector that answers 503 is tried again.
func TestExportDecodes(t *testing.T) {
	recv := otlptest.Start(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", recv.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
	t.Setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20t0k")
	t.Setenv("OTEL_SERVICE_NAME", "ci-banger")
	tel, err := Setup(context.Background(), "bangerd", "test", zerolog.Nop())
	if err != nil || tel == nil {
		t.Fatal(tel, err)
	}
	recv.FailNext(1, http.StatusServiceUnavailable)
	_, span := tel.tracer.Start(context.Background(), "typed")
	span.SetAttributes(attribute.Bool("b", true), attribute.Bool("f", false), attribute.Int("i", -3), attribute.Float64("x", 1.5),
		attribute.String("s", "é"), attribute.String("empty", ""), attribute.StringSlice("ss", []string{"a", "b"}), attribute.IntSlice("is", []int{1, 2}),
		attribute.BoolSlice("bs", []bool{true}), attribute.Float64Slice("fs", []float64{0.25}))
	span.End()
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := recv.Spans()
	if len(spans) != 1 || recv.Requests() != 2 {
		t.Fatalf("%d spans in %d requests, want 1 in 2 (one refused)", len(spans), recv.Requests())
	}
	want := map[string]string{"b": "true", "f": "false", "i": "-3", "x": "1.5", "s": "é", "empty": "", "ss": "[a b]", "is": "[1 2]", "bs": "[true]", "fs": "[0.25]"}
	got := spans[0]
	for k, v := range want {
		if got.Attributes[k] != v {
			t.Errorf("attribute %s = %q, want %q", k, got.Attributes[k], v)
		}
	}
	if got.Service != "ci-banger" || got.Name != "typed" || got.Kind != 1 || !got.End.After(got.Start) || got.ParentSpanID != "" {
		t.Errorf("span %+v", got)
	}
	if recv.Header("Authorization") != "Bearer t0k" || recv.Header("Content-Encoding") != "gzip" || recv.Header("Content-Type") != "application/x-protobuf" {
		t.Errorf("headers: %q %q %q", recv.Header("Authorization"), recv.Header("Content-Encoding"), recv.Header("Content-Type"))
	}
}

// A collector that refuses the spans costs a warning in the applet's
// log, never the applet.
func TestExportFailureIsLogged(t *testing.T) {
	recv := otlptest.Start(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", recv.URL)
	recv.FailNext(100, http.StatusBadRequest)
	var log bytes.Buffer
	tel, err := Setup(context.Background(), "bangerd", "test", zerolog.New(&log))
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.tracer.Start(context.Background(), "refused")
	span.End()
	tel.Close(zerolog.New(&log))
	if !strings.Contains(log.String(), `"level":"warn"`) || !strings.Contains(log.String(), "400 Bad Request") || recv.Requests() != 1 {
		t.Errorf("after a refused export (%d requests), the log:\n%s", recv.Requests(), log.String())
	}
}
