package telemetry

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// The exporter is the SDK's (otlptrace: its batch of spans made into the
// official OTLP protobuf types) on a transport of banger's: an
// otlptrace.Client that posts the protobuf to an OTLP/HTTP collector,
// configured by the standard OTEL_EXPORTER_OTLP_* variables (otlpConfig).
// Not the SDK's own HTTP transport, otlptracehttp: its collector package
// links gRPC into the one binary every applet starts from, which made
// every start of the client slower (a `vm exec` 1.13×, BENCHMARKS.md).

// httpClient is the transport: one POST of an ExportTraceServiceRequest
// per batch, retried as the specification says.
type httpClient struct {
	cfg    otlpConfig
	client *http.Client
}

// otlpConfig is the exporter's part of the OTEL_* environment: the
// signal's own variable (OTEL_EXPORTER_OTLP_TRACES_X) over the general
// one (OTEL_EXPORTER_OTLP_X), as the specification says.
type otlpConfig struct {
	url     string // the traces endpoint, /v1/traces
	headers http.Header
	gzip    bool
	timeout time.Duration // of one export, its retries included
	tls     *tls.Config   // nil: the default
}

// defaultEndpoint is the specification's OTLP/HTTP default.
const defaultEndpoint = "http://localhost:4318"

// newExporter is the SDK's OTLP exporter on the transport getenv's
// variables configure.
func newExporter(ctx context.Context, getenv func(string) string) (*otlptrace.Exporter, error) {
	cfg, err := readOTLPConfig(getenv)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // a collector is reached directly, as otlptracehttp's is unless told otherwise
	if cfg.tls != nil {
		tr.TLSClientConfig = cfg.tls
	}
	return otlptrace.New(ctx, &httpClient{cfg: cfg, client: &http.Client{Transport: tr}})
}

func readOTLPConfig(getenv func(string) string) (otlpConfig, error) {
	get := func(name string) string {
		if v := strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_TRACES_" + name)); v != "" {
			return v
		}
		return strings.TrimSpace(getenv("OTEL_EXPORTER_OTLP_" + name))
	}
	cfg := otlpConfig{url: getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), headers: http.Header{}, timeout: 10 * time.Second}
	if cfg.url == "" {
		base := getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
		if base == "" {
			base = defaultEndpoint
		}
		cfg.url = strings.TrimSuffix(base, "/") + "/v1/traces"
	}
	if u, err := url.Parse(cfg.url); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return cfg, fmt.Errorf("OTLP traces endpoint %q: want an http:// or https:// URL", cfg.url)
	}
	for _, kv := range strings.Split(get("HEADERS"), ",") {
		k, v, ok := strings.Cut(kv, "=")
		if k = strings.TrimSpace(k); !ok || k == "" {
			continue
		}
		if dv, err := url.QueryUnescape(strings.TrimSpace(v)); err == nil {
			cfg.headers.Add(k, dv)
		}
	}
	if t := get("TIMEOUT"); t != "" {
		ms, err := strconv.Atoi(t)
		if err != nil || ms <= 0 {
			return cfg, fmt.Errorf("OTEL_EXPORTER_OTLP_TIMEOUT=%s: want milliseconds", t)
		}
		cfg.timeout = time.Duration(ms) * time.Millisecond
	}
	switch c := get("COMPRESSION"); c {
	case "", "none":
	case "gzip":
		cfg.gzip = true
	default:
		return cfg, fmt.Errorf("OTEL_EXPORTER_OTLP_COMPRESSION=%s: want gzip or none", c)
	}
	var err error
	cfg.tls, err = readTLS(get("CERTIFICATE"), get("CLIENT_CERTIFICATE"), get("CLIENT_KEY"))
	return cfg, err
}

// readTLS is the TLS configuration of the certificate files named (a CA
// bundle, a client certificate and key), or nil when none is.
func readTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && keyFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_CERTIFICATE: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_CERTIFICATE %s: no PEM certificate", caFile)
		}
	}
	if certFile != "" || keyFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and _CLIENT_KEY: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Start is the transport's start: it connects on the first post.
func (e *httpClient) Start(context.Context) error { return nil }

// UploadTraces posts one batch, retrying what the specification calls
// retryable (429, 502, 503, 504, a failed connection) with backoff until
// the export's timeout.
func (e *httpClient) UploadTraces(ctx context.Context, spans []*tracepb.ResourceSpans) error {
	if len(spans) == 0 {
		return nil
	}
	msg, err := exportRequest(spans)
	if err != nil {
		return err
	}
	body, err := e.body(msg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.timeout)
	defer cancel()
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		retry, err := e.post(ctx, body)
		if err == nil || retry == nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("OTLP export: %w (last: %w)", ctx.Err(), err)
		case <-time.After(max(wait, retry.after)):
		}
	}
}

// exportRequest is the protobuf of an ExportTraceServiceRequest of spans:
// its one field, resource_spans = 1, repeated. (Its generated type is in
// the collector package, which links gRPC.)
func exportRequest(spans []*tracepb.ResourceSpans) ([]byte, error) {
	var b []byte
	for _, rs := range spans {
		m, err := proto.Marshal(rs)
		if err != nil {
			return nil, fmt.Errorf("encode spans: %w", err)
		}
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, m)
	}
	return b, nil
}

func (e *httpClient) body(msg []byte) ([]byte, error) {
	if !e.cfg.gzip {
		return msg, nil
	}
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write(msg)
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// retryAfter says that a failed post may be tried again, not before
// after (the collector's Retry-After, or 0).
type retryAfter struct{ after time.Duration }

// post sends body once. A non-nil retry says the failure is one to try
// again.
func (e *httpClient) post(ctx context.Context, body []byte) (*retryAfter, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.cfg.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for k, vs := range e.cfg.headers {
		req.Header[k] = vs
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	if e.cfg.gzip {
		req.Header.Set("Content-Encoding", "gzip")
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return &retryAfter{}, fmt.Errorf("OTLP export to %s: %w", e.cfg.url, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch resp.StatusCode {
	case http.StatusOK, http.StatusAccepted, http.StatusNoContent:
		return nil, nil
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		return &retryAfter{after: time.Duration(secs) * time.Second}, fmt.Errorf("OTLP export to %s: %s", e.cfg.url, resp.Status)
	}
	return nil, fmt.Errorf("OTLP export to %s: %s: %s", e.cfg.url, resp.Status, bytes.TrimSpace(msg))
}

// Stop closes the transport's idle connections; the batch processor has
// flushed by then.
func (e *httpClient) Stop(context.Context) error {
	e.client.CloseIdleConnections()
	return nil
}

var _ otlptrace.Client = (*httpClient)(nil)
