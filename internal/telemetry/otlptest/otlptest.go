// Package otlptest is an OTLP/HTTP trace receiver for tests: a real HTTP
// server on loopback that decodes what an exporter posts to /v1/traces
// (ExportTraceServiceRequest protobufs) and keeps the spans. Only tests
// import it.
package otlptest

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	common "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/proto"
)

// Span is one received span, its ids in lowercase hex.
type Span struct {
	Service         string // the resource's service.name
	TraceID, SpanID string
	ParentSpanID    string // "" for a root span
	Name            string
	Kind            int32 // OTLP's SpanKind: 2 server, 1 internal
	Attributes      map[string]string
	StatusCode      int32 // 2: error
	Start, End      time.Time
	ParentRemote    bool
}

// Receiver collects the spans posted to it.
type Receiver struct {
	// URL is the receiver's base, for OTEL_EXPORTER_OTLP_ENDPOINT.
	URL string

	mu       sync.Mutex // guards the fields below
	spans    []Span
	requests int
	header   http.Header // of the last request
	failures int         // how many requests to answer fail with
	fail     int         // that status
}

// FailNext makes the receiver answer the next n requests with status,
// keeping nothing of them.
func (r *Receiver) FailNext(n, status int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures, r.fail = n, status
}

// Header is the last request's header name.
func (r *Receiver) Header(name string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.header.Get(name)
}

// Start starts a receiver that stops when the test ends.
func Start(t testing.TB) *Receiver {
	r := &Receiver{}
	srv := httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(srv.Close)
	r.URL = srv.URL
	return r
}

// serve answers one export: 200 with an empty ExportTraceServiceResponse,
// or 400 for a body that does not decode.
func (r *Receiver) serve(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.requests++
	r.header = req.Header.Clone()
	fail := r.failures > 0
	if fail {
		r.failures--
	}
	status := r.fail
	r.mu.Unlock()
	if fail {
		http.Error(w, "failing as told", status)
		return
	}
	body, err := readBody(req)
	var msg coltrace.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(body, &msg)
	}
	if err != nil || req.URL.Path != "/v1/traces" {
		http.Error(w, "not an OTLP trace export", http.StatusBadRequest)
		return
	}
	got := spansOf(&msg)
	r.mu.Lock()
	r.spans = append(r.spans, got...)
	r.mu.Unlock()
	out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

func readBody(req *http.Request) ([]byte, error) {
	var rd io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			return nil, err
		}
		rd = zr
	}
	return io.ReadAll(rd)
}

// spansOf flattens an export into its spans.
func spansOf(msg *coltrace.ExportTraceServiceRequest) []Span {
	var out []Span
	for _, rs := range msg.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				sp := Span{Service: service, TraceID: hex.EncodeToString(s.GetTraceId()), SpanID: hex.EncodeToString(s.GetSpanId()),
					Name: s.GetName(), Kind: int32(s.GetKind()), Attributes: map[string]string{}, StatusCode: int32(s.GetStatus().GetCode()),
					Start: time.Unix(0, int64(s.GetStartTimeUnixNano())), End: time.Unix(0, int64(s.GetEndTimeUnixNano()))}
				if p := s.GetParentSpanId(); len(p) > 0 && !bytes.Equal(p, make([]byte, len(p))) {
					sp.ParentSpanID = hex.EncodeToString(p)
				}
				// SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, _IS_REMOTE_MASK
				sp.ParentRemote = s.GetFlags()&0x300 == 0x300
				for _, kv := range s.GetAttributes() {
					sp.Attributes[kv.GetKey()] = text(kv.GetValue())
				}
				out = append(out, sp)
			}
		}
	}
	return out
}

// text is an attribute value as text: strings as they are, numbers and
// booleans as strconv writes them, arrays as [a b].
func text(v *common.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *common.AnyValue_StringValue:
		return x.StringValue
	case *common.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	case *common.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *common.AnyValue_DoubleValue:
		return strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
	case *common.AnyValue_ArrayValue:
		var parts []string
		for _, e := range x.ArrayValue.GetValues() {
			parts = append(parts, text(e))
		}
		return "[" + strings.Join(parts, " ") + "]"
	}
	return fmt.Sprintf("%T", v.GetValue())
}

// Spans returns the spans received so far.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// Requests is the number of requests received, whatever they held.
func (r *Receiver) Requests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests
}

// Wait waits up to d for ok to hold of the spans received, and returns
// them; the test fails if it never does.
func (r *Receiver) Wait(t testing.TB, d time.Duration, ok func([]Span) bool) []Span {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		spans := r.Spans()
		if ok(spans) {
			return spans
		}
		if time.Now().After(deadline) {
			t.Fatalf("the receiver's %d spans are not what was awaited within %s:\n%s", len(spans), d, Describe(spans))
			return spans
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Describe lists spans one a line, for a failing test's message.
func Describe(spans []Span) string {
	var b bytes.Buffer
	for _, s := range spans {
		b.WriteString(s.Service + " " + s.Name + " trace " + s.TraceID + " span " + s.SpanID + " parent " + s.ParentSpanID + "\n")
	}
	return b.String()
}
