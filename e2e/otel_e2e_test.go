package e2e_test

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/telemetry/otlptest"
)

// otelEnv is the standard environment that points an applet's span
// export at recv, its batches sent every 50 ms.
func otelEnv(recv *otlptest.Receiver) []string {
	return []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + recv.URL, "OTEL_BSP_SCHEDULE_DELAY=50"}
}

// inTrace is the spans of one trace, by span id.
func inTrace(spans []otlptest.Span, trace string) map[string]otlptest.Span {
	out := map[string]otlptest.Span{}
	for _, s := range spans {
		if s.TraceID == trace {
			out[s.SpanID] = s
		}
	}
	return out
}

// named is the spans of m called name.
func named(m map[string]otlptest.Span, name string) []otlptest.Span {
	var out []otlptest.Span
	for _, s := range m {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// hasAll reports whether m has a span of each name.
func hasAll(m map[string]otlptest.Span, names ...string) bool {
	for _, n := range names {
		if len(named(m, n)) == 0 {
			return false
		}
	}
	return true
}

// checkTree checks that every span of the trace is a child of the
// caller's span (then a call the daemon served) or of a span received.
func checkTree(t *testing.T, m map[string]otlptest.Span, caller string) {
	t.Helper()
	var all []otlptest.Span
	for _, s := range m {
		all = append(all, s)
	}
	for _, s := range m {
		switch {
		case s.ParentSpanID == caller:
			if s.Kind != 2 || s.Service != "bangerd" {
				t.Errorf("a child of the caller's span that is not a call the daemon served: %+v", s)
			}
		case m[s.ParentSpanID].SpanID == "":
			t.Errorf("%s %s: its parent %q was not received; the trace:\n%s", s.Service, s.Name, s.ParentSpanID, otlptest.Describe(all))
		}
	}
}

// TRACEPARENT=... banger vm run --rm -- true, against a daemon that
// exports: the receiver gets the command's spans in the caller's trace,
// its calls children of the caller's span, the create's stages children
// of the create. A daemon whose export is off (OTEL_SDK_DISABLED, the
// endpoint still set) sends nothing.
func TestOTLPSpansOfOneCommand(t *testing.T) {
	needGuests(t)
	s := newSandbox(t)
	recv := otlptest.Start(t)
	base := s.env
	s.env = append(base, otelEnv(recv)...)
	s.daemon()
	const trace, caller = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	s.env = append(s.env, "TRACEPARENT=00-"+trace+"-"+caller+"-01")
	s.banger("ping").want(t, 0)
	s.banger("vm", "run", "--rm", "--", "true").want(t, 0)
	recv.Wait(t, 30*time.Second, func(spans []otlptest.Span) bool {
		return hasAll(inTrace(spans, trace), "ping", "vm.create.begin", "operation.wait", "vm.exec", "vm.delete")
	})
	// The daemon flushes what is left as it stops.
	s.stopDaemon()
	m := inTrace(recv.Spans(), trace)
	create := named(m, "vm.create.begin")
	if len(create) != 1 || create[0].ParentSpanID != caller || !strings.HasPrefix(create[0].Attributes["banger.op_id"], "op-") {
		t.Fatalf("the create's spans: %+v", create)
	}
	stages := 0
	for _, sp := range m {
		if sp.ParentSpanID == create[0].SpanID {
			stages++
			if sp.Kind != 1 || sp.Attributes["banger.op_id"] != create[0].Attributes["banger.op_id"] {
				t.Errorf("a child of the create that is not one of its stages: %+v", sp)
			}
		}
	}
	if stages < 3 {
		t.Errorf("the create has %d stages in the trace", stages)
	}
	checkTree(t, m, caller)

	// Export off: nothing reaches the receiver while a command runs.
	sent := recv.Requests()
	s.env = append(append(base, otelEnv(recv)...), "OTEL_SDK_DISABLED=true")
	s.daemon()
	s.banger("vm", "run", "--rm", "--", "true").want(t, 0)
	s.stopDaemon()
	if n := recv.Requests(); n != sent {
		t.Errorf("a daemon with OTEL_SDK_DISABLED=true sent %d requests", n-sent)
	}
}

// The helper exports with its own environment: as a service, its span of
// a call the daemon makes is a child of the daemon's stage that made it;
// per call (sudo mode, here run directly), it flushes its span before it
// exits.
func TestOTLPSpansOfTheHelper(t *testing.T) {
	s := newSandbox(t)
	recv := otlptest.Start(t)
	s.env = append(s.env, otelEnv(recv)...)
	hsock, _ := s.startHelper("0")
	s.env = append(s.env, "BANGER_HELPER_SOCKET="+hsock)
	const trace, caller = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	s.env = append(s.env, "TRACEPARENT=00-"+trace+"-"+caller+"-01")
	s.banger("host", "check").want(t, 0)
	spans := recv.Wait(t, 30*time.Second, func(spans []otlptest.Span) bool {
		return hasAll(inTrace(spans, trace), "host.check", "call helper", "priv.ping")
	})
	m := inTrace(spans, trace)
	check, stage, ping := named(m, "host.check")[0], named(m, "call helper")[0], named(m, "priv.ping")[0]
	if check.ParentSpanID != caller || stage.ParentSpanID != check.SpanID || ping.ParentSpanID != stage.SpanID || ping.Service != "bangerd-root" {
		t.Errorf("host.check %+v\ncall helper %+v\npriv.ping %+v", check, stage, ping)
	}

	// Per call: a batch that would wait a minute goes out as it exits.
	const stdioTrace = "5b8efff798038103d269b633813fc60c"
	cmd := exec.Command(bangerBin, "bangerd-root", "--stdio", "--owner-uid", "0")
	cmd.Env = append(s.env, "OTEL_BSP_SCHEDULE_DELAY=60000")
	cmd.Stdin = strings.NewReader(`{"version":1,"method":"priv.ping","traceparent":"00-` + stdioTrace + `-` + caller + `-01"}` + "\n")
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil || !strings.Contains(out.String(), `"ok":true`) {
		t.Fatalf("bangerd-root --stdio: %v %s", err, out.String())
	}
	got := named(inTrace(recv.Spans(), stdioTrace), "priv.ping")
	if len(got) != 1 || got[0].ParentSpanID != caller {
		t.Errorf("the per-call helper's span, received when it exited: %+v", got)
	}
}

// BenchmarkOTLPInterleaved compares the build before OpenTelemetry
// (BANGER_BENCH_BASE names its binary) with this one twice, interleaved
// in one run: this build with no OTEL_* variable (tracing on, no
// exporter) and with an OTLP exporter sending to a local receiver. One
// VM "box" serves all three, its daemon swapped between them (a daemon
// re-attaches to the VMs that run), so a VM's own pace is no build's;
// each turn runs `vm exec box -- true` execs times and `vm run --rm --
// true` once with that build's client and daemon, the order of the
// builds rotating. It reports the medians and each ratio to the build
// before.
//
//	BANGER_BENCH_BASE=/tmp/banger-base go test -run '^$' -bench OTLPInterleaved -benchtime 12x ./e2e/
func BenchmarkOTLPInterleaved(b *testing.B) {
	baseBin := os.Getenv("BANGER_BENCH_BASE")
	if baseBin == "" {
		b.Skip("BANGER_BENCH_BASE names no binary of the build before")
	}
	recv := otlptest.Start(b)
	v := newVMBench(b)
	v.mustRun("vm", "create", "--name", "box")
	v.stopDaemon()
	builds := []*buildBench{
		{name: "before", bin: baseBin, env: v.env},
		{name: "traced", bin: bangerBin, env: v.env},
		{name: "exported", bin: bangerBin, env: append(v.env, otelEnv(recv)...)},
	}
	for _, x := range builds {
		b.Cleanup(func() { x.stop() })
	}
	const execs = 8
	i := 0
	for b.Loop() {
		for k := range builds {
			x := builds[(i+k)%len(builds)]
			x.start(b, v)
			for range execs {
				x.execs = append(x.execs, x.timed(b, "vm", "exec", "box", "--", "true"))
			}
			x.runs = append(x.runs, x.timed(b, "vm", "run", "--rm", "--", "true"))
			x.stop()
		}
		i++
	}
	before := builds[0]
	for _, x := range builds {
		b.ReportMetric(medianMS(x.execs), x.name+"-exec-p50-ms")
		b.ReportMetric(medianMS(x.runs), x.name+"-run-p50-ms")
		if x != before {
			b.ReportMetric(medianMS(x.execs)/medianMS(before.execs), x.name+"/before-exec")
			b.ReportMetric(medianMS(x.runs)/medianMS(before.runs), x.name+"/before-run")
		}
	}
	if len(recv.Spans()) == 0 {
		b.Error("the exporting daemon sent no span")
	}
}

// buildBench is one build's binary and environment, and its timings.
type buildBench struct {
	name, bin   string
	env         []string
	execs, runs []time.Duration
	daemon      *exec.Cmd
}

// start starts this build's daemon on v's state and waits for its ping.
func (x *buildBench) start(b *testing.B, v *vmBench) {
	b.Helper()
	x.daemon = exec.Command(x.bin, "bangerd", "--helper", "none")
	x.daemon.Env = x.env
	if err := x.daemon.Start(); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, err := v.ping(); err != nil; _, err = v.ping() {
		if time.Now().After(deadline) {
			b.Fatalf("%s: the daemon does not answer: %v", x.name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop stops this build's daemon, if it runs (its VM lives on).
func (x *buildBench) stop() {
	if x.daemon != nil {
		x.daemon.Process.Signal(syscall.SIGTERM)
		x.daemon.Wait()
		x.daemon = nil
	}
}

// timed runs this build's client and returns how long it took; a failure
// fails the benchmark.
func (x *buildBench) timed(b *testing.B, args ...string) time.Duration {
	b.Helper()
	cmd := exec.Command(x.bin, args...)
	cmd.Env = x.env
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("%s: banger %s: %v\n%s", x.name, strings.Join(args, " "), err, out)
	}
	return time.Since(start)
}
