package logging_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"banger/logging"
)

const testOpID = "op-01JT2M4Q8W3R6ZK5N7YB2C9D0E"

// records decodes the JSON lines in buf, failing the test on any line that
// is not one JSON object.
func records(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimRight(buf.String(), "\n"), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("record %q is not a JSON object: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func TestNewRecordFields(t *testing.T) {
	var buf bytes.Buffer
	l := logging.New(&buf, "bangerd", zerolog.InfoLevel)
	before := time.Now()
	l.Info().Msg("hello")
	l.Debug().Msg("filtered at info")
	after := time.Now()

	recs := records(t, &buf)
	if len(recs) != 1 {
		t.Fatalf("got %d records, want 1:\n%s", len(recs), buf.String())
	}
	r := recs[0]
	for k, want := range map[string]string{"level": "info", "applet": "bangerd", "msg": "hello"} {
		if r[k] != want {
			t.Errorf("%s = %v, want %q (record %v)", k, r[k], want, r)
		}
	}
	if _, ok := r["message"]; ok {
		t.Errorf("record has zerolog's default \"message\" key; the protocol's key is \"msg\": %v", r)
	}
	ts, _ := r["time"].(string)
	parsed, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		t.Fatalf("time %q is not RFC 3339: %v", ts, err)
	}
	if !strings.Contains(ts, ".") {
		t.Errorf("time %q has no sub-second digits", ts)
	}
	if !strings.HasSuffix(ts, "Z") {
		t.Errorf("time %q is not UTC", ts)
	}
	if _, err := time.Parse(logging.TimeFormat, ts); err != nil {
		t.Errorf("time %q does not match TimeFormat: %v", ts, err)
	}
	// The record's time is truncated to microseconds.
	if parsed.Before(before.Truncate(time.Microsecond)) || parsed.After(after) {
		t.Errorf("time %v not within [%v, %v]", parsed, before, after)
	}
}

func TestTimeSortsAsText(t *testing.T) {
	// A fixed-width fraction keeps records in time order when sorted as text,
	// even when a time falls on a whole second.
	a := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC).Format(logging.TimeFormat)
	b := time.Date(2025, 1, 2, 3, 4, 5, 1000, time.UTC).Format(logging.TimeFormat)
	if len(a) != len(b) || !(a < b) {
		t.Errorf("%q and %q do not sort as text", a, b)
	}
}

func TestNewConcurrentWithLogging(t *testing.T) {
	// New writes zerolog's package variables; it must not race with records
	// written on other goroutines (run with -race).
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf bytes.Buffer
			l := logging.New(&buf, "a", zerolog.InfoLevel)
			for j := range 50 {
				l.Info().Int("i", i).Int("j", j).Msg("x")
				_ = logging.New(&bytes.Buffer{}, "b", zerolog.InfoLevel)
			}
		}()
	}
	wg.Wait()
}

func TestWithOpStampsEveryRecord(t *testing.T) {
	var buf bytes.Buffer
	base := logging.New(&buf, "bangerd-root", zerolog.DebugLevel)
	ctx := logging.WithOp(context.Background(), base, testOpID, "priv.create_tap")

	log := logging.From(ctx)
	log.Info().Msg("one")
	log.Debug().Str("tap", "tap-3f2a").Msg("two")
	log.Warn().Err(errors.New("boom")).Msg("three")
	// A fresh From on the same context gives the same fields.
	logging.From(ctx).Error().Msg("four")

	recs := records(t, &buf)
	if len(recs) != 4 {
		t.Fatalf("got %d records, want 4:\n%s", len(recs), buf.String())
	}
	for _, r := range recs {
		if r["op_id"] != testOpID || r["method"] != "priv.create_tap" || r["applet"] != "bangerd-root" {
			t.Errorf("record lacks op fields: %v", r)
		}
	}
	if recs[1]["tap"] != "tap-3f2a" || recs[2]["error"] != "boom" {
		t.Errorf("record fields lost: %v", recs)
	}
}

func TestWithOpNoMethod(t *testing.T) {
	var buf bytes.Buffer
	ctx := logging.WithOp(context.Background(), logging.New(&buf, "bangerd", zerolog.InfoLevel), testOpID, "")
	logging.From(ctx).Info().Msg("x")
	r := records(t, &buf)[0]
	if r["op_id"] != testOpID {
		t.Errorf("op_id = %v", r["op_id"])
	}
	if _, ok := r["method"]; ok {
		t.Errorf("empty method written: %v", r)
	}
}

func TestWithOpDoesNotChangeBase(t *testing.T) {
	var buf bytes.Buffer
	base := logging.New(&buf, "bangerd", zerolog.InfoLevel)
	_ = logging.WithOp(context.Background(), base, testOpID, "ping")
	base.Info().Msg("base")
	if r := records(t, &buf)[0]; r["op_id"] != nil {
		t.Errorf("base logger gained op_id: %v", r)
	}
}

func TestWithLogger(t *testing.T) {
	var buf bytes.Buffer
	l := logging.New(&buf, "banger", zerolog.InfoLevel).With().Str("vm", "box").Logger()
	ctx := logging.WithLogger(context.Background(), l)
	logging.From(ctx).Info().Msg("reconcile")
	r := records(t, &buf)
	if len(r) != 1 || r[0]["vm"] != "box" || r[0]["msg"] != "reconcile" {
		t.Errorf("records = %v", r)
	}
}

func TestFromBareContextDiscards(t *testing.T) {
	l := logging.From(context.Background())
	if l == nil {
		t.Fatal("From returned nil")
	}
	if got := l.GetLevel(); got != zerolog.Disabled {
		t.Errorf("level = %v, want disabled", got)
	}
	// None of these may panic.
	l.Info().Str("k", "v").Msg("dropped")
	l.Error().Err(errors.New("x")).Msg("dropped")
	if err := logging.Stage(context.Background(), "s", func(context.Context) error { return nil }); err != nil {
		t.Errorf("Stage on a bare context: %v", err)
	}
}

func TestParseLevel(t *testing.T) {
	good := []struct {
		in   string
		want zerolog.Level
	}{
		{"", zerolog.InfoLevel},
		{"  ", zerolog.InfoLevel},
		{"trace", zerolog.TraceLevel},
		{"debug", zerolog.DebugLevel},
		{"info", zerolog.InfoLevel},
		{"warn", zerolog.WarnLevel},
		{"error", zerolog.ErrorLevel},
		{"DEBUG", zerolog.DebugLevel},
		{" Warn\n", zerolog.WarnLevel},
	}
	for _, tc := range good {
		got, err := logging.ParseLevel(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"verbose", "warning!", "1", "-1", "100", "fatal", "panic", "disabled", "inf o", "infoo"} {
		got, err := logging.ParseLevel(in)
		if err == nil {
			t.Errorf("ParseLevel(%q) = %v, want an error", in, got)
			continue
		}
		if !strings.Contains(err.Error(), "want trace, debug, info, warn or error") {
			t.Errorf("ParseLevel(%q) error %q does not list the levels", in, err)
		}
		if got != zerolog.InfoLevel {
			t.Errorf("ParseLevel(%q) returned level %v with its error, want info", in, got)
		}
	}
}

func TestStageCompleted(t *testing.T) {
	var buf bytes.Buffer
	ctx := logging.WithOp(context.Background(), logging.New(&buf, "bangerd", zerolog.DebugLevel), testOpID, "vm.create.begin")
	var sawCtx bool
	err := logging.Stage(ctx, "prepare-disk", func(ctx context.Context) error {
		sawCtx = logging.From(ctx) != nil
		time.Sleep(20 * time.Millisecond)
		return nil
	})
	if err != nil || !sawCtx {
		t.Fatalf("Stage = %v (fn ran: %v)", err, sawCtx)
	}
	recs := records(t, &buf)
	if len(recs) != 2 {
		t.Fatalf("got %d records, want started and completed:\n%s", len(recs), buf.String())
	}
	if recs[0]["msg"] != "stage started" || recs[0]["level"] != "debug" {
		t.Errorf("first record = %v", recs[0])
	}
	r := recs[1]
	if r["msg"] != "stage completed" || r["level"] != "info" || r["stage"] != "prepare-disk" || r["op_id"] != testOpID {
		t.Errorf("completed record = %v", r)
	}
	d, ok := r["duration_ms"].(float64)
	if !ok || d < 20 || d > 60_000 {
		t.Errorf("duration_ms = %v, want a number >= 20", r["duration_ms"])
	}
	if _, ok := r["error"]; ok {
		t.Errorf("completed record has an error: %v", r)
	}
}

func TestStageFailed(t *testing.T) {
	var buf bytes.Buffer
	ctx := logging.WithOp(context.Background(), logging.New(&buf, "bangerd", zerolog.InfoLevel), testOpID, "vm.create.begin")
	boom := errors.New("mkfs.ext4: exit status 1")
	err := logging.Stage(ctx, "build-rootfs", func(context.Context) error { return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("Stage returned %v, want the step's error", err)
	}
	recs := records(t, &buf)
	if len(recs) != 1 {
		t.Fatalf("got %d records, want 1 (started is debug):\n%s", len(recs), buf.String())
	}
	r := recs[0]
	if r["msg"] != "stage failed" || r["level"] != "warn" || r["stage"] != "build-rootfs" ||
		r["error"] != boom.Error() || r["op_id"] != testOpID {
		t.Errorf("failed record = %v", r)
	}
	if _, ok := r["duration_ms"].(float64); !ok {
		t.Errorf("failed record has no duration_ms: %v", r)
	}
}

func TestMillis(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want float64
	}{
		{0, 0},
		{1500 * time.Microsecond, 1.5},
		{999 * time.Nanosecond, 0},
		{2 * time.Second, 2000},
		{1234567 * time.Nanosecond, 1.234},
	} {
		if got := logging.Millis(tc.d); got != tc.want {
			t.Errorf("Millis(%v) = %v, want %v", tc.d, got, tc.want)
		}
	}
}
