package logging_test

import (
	"context"
	"io"
	"testing"

	"github.com/rs/zerolog"

	"banger/logging"
)

// BenchmarkRecordWithOpID is the cost of one record written while serving
// an RPC: a logger from WithOp (op_id, method, applet, time) and two fields.
func BenchmarkRecordWithOpID(b *testing.B) {
	base := logging.New(io.Discard, "bangerd", zerolog.InfoLevel)
	ctx := logging.WithOp(context.Background(), base, testOpID, "vm.start")
	log := logging.From(ctx)
	b.ReportAllocs()
	for b.Loop() {
		log.Info().Str("vm", "box").Float64("duration_ms", 1.25).Msg("vm started")
	}
}

// BenchmarkRecordWithOpAndTraceID is the same record in a call that
// carries a trace: the server's logger has trace_id beside op_id.
func BenchmarkRecordWithOpAndTraceID(b *testing.B) {
	base := logging.New(io.Discard, "bangerd", zerolog.InfoLevel).With().Str("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736").Logger()
	ctx := logging.WithOp(context.Background(), base, testOpID, "vm.start")
	log := logging.From(ctx)
	b.ReportAllocs()
	for b.Loop() {
		log.Info().Str("vm", "box").Float64("duration_ms", 1.25).Msg("vm started")
	}
}

// BenchmarkRecordFiltered is a debug record on an info logger: what a
// per-call debug record costs when it is not written.
func BenchmarkRecordFiltered(b *testing.B) {
	base := logging.New(io.Discard, "bangerd", zerolog.InfoLevel)
	log := logging.From(logging.WithOp(context.Background(), base, testOpID, "ping"))
	b.ReportAllocs()
	for b.Loop() {
		log.Debug().Str("vm", "box").Msg("dropped")
	}
}

// BenchmarkWithOp is the per-call cost of attaching the op logger.
func BenchmarkWithOp(b *testing.B) {
	base := logging.New(io.Discard, "bangerd", zerolog.InfoLevel)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_ = logging.WithOp(ctx, base, testOpID, "vm.start")
	}
}

// BenchmarkStage is one successful stage with its info record.
func BenchmarkStage(b *testing.B) {
	base := logging.New(io.Discard, "bangerd", zerolog.InfoLevel)
	ctx := logging.WithOp(context.Background(), base, testOpID, "vm.create.begin")
	step := func(context.Context) error { return nil }
	b.ReportAllocs()
	for b.Loop() {
		_ = logging.Stage(ctx, "boot", step)
	}
}
