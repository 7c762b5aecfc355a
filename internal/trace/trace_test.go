package trace

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"banger/rpc"
)

// testdata/bangerd.log is a real daemon log (BANGER_LOG_LEVEL=debug): a
// `vm run --rm` whose create failed (no host kernel), then one that
// built the default image and ran, then one from a standby; into it the
// agent's records of the exec, as the daemon relays them, and an op an
// older daemon wrote without trace ids. testdata/bangerd-root.log is the
// helper's records of a call the daemon made for the create.
const (
	runTrace  = "01a2354ed95265bf6c01b5469f5a0896"
	execOp    = "op-01M8TMXWDBCCP12GR6Y9MPZ7PT"
	createOp  = "op-01M8TMXPB00TREQCAEVYYQVB49"
	failTrace = "01a2354d92d80df8f89233d510e0df3d"
	olderOp   = "op-01M8R000000000000000000AB1"
)

func testSources(t *testing.T) []Source {
	t.Helper()
	var srcs []Source
	for _, name := range []string{"bangerd.log", "bangerd-root.log"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		srcs = append(srcs, Source{Name: name, R: bytes.NewReader(b)})
	}
	return srcs
}

func find(t *testing.T, id string, srcs []Source) Found {
	t.Helper()
	f, err := Find(id, srcs)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// linesWith counts the testdata lines holding s, as grep would.
func linesWith(t *testing.T, s string) int {
	t.Helper()
	n := 0
	for _, name := range []string{"bangerd.log", "bangerd-root.log"} {
		b, _ := os.ReadFile(filepath.Join("testdata", name))
		n += strings.Count(string(b), s)
	}
	return n
}

func TestTestdataIDsAreValid(t *testing.T) {
	for _, op := range []string{execOp, createOp, olderOp} {
		if !rpc.ValidOpID(op) {
			t.Errorf("%s is not an op id", op)
		}
	}
	for _, tr := range []string{runTrace, failTrace} {
		if !rpc.ValidTraceID(tr) {
			t.Errorf("%s is not a trace id", tr)
		}
	}
}

// An op id finds its command's whole trace: every record with its trace
// id in every source (the helper's too), in time order, and no other.
func TestAnOpFindsItsWholeTrace(t *testing.T) {
	f := find(t, execOp, testSources(t))
	if f.TraceID != runTrace {
		t.Fatalf("trace %q, want %s", f.TraceID, runTrace)
	}
	if want := linesWith(t, `"trace_id":"`+runTrace+`"`); len(f.Records) != want {
		t.Errorf("%d records, want the %d of the trace", len(f.Records), want)
	}
	methods, sources, ops := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for i, r := range f.Records {
		if r.TraceID != runTrace {
			t.Errorf("a record of another trace: %s", r.Raw)
		}
		if i > 0 && r.Time.Before(f.Records[i-1].Time) {
			t.Errorf("record %d is before the one above it", i)
		}
		methods[r.Method], sources[r.Source], ops[r.OpID] = true, true, true
	}
	for _, m := range []string{"ping", "vm.create.begin", "operation.wait", "vm.exec", "vm.delete", "priv.create_tap", "agent.exec"} {
		if !methods[m] {
			t.Errorf("no %s record (%v)", m, methods)
		}
	}
	if !sources["bangerd-root.log"] || len(ops) < 5 {
		t.Errorf("sources %v, ops %v", sources, ops)
	}

	// The trace id finds the same records.
	byTrace := find(t, runTrace, testSources(t))
	if len(byTrace.Records) != len(f.Records) {
		t.Fatalf("by trace id %d records, by op id %d", len(byTrace.Records), len(f.Records))
	}
	for i := range f.Records {
		if !bytes.Equal(f.Records[i].Raw, byTrace.Records[i].Raw) {
			t.Errorf("record %d differs: %s / %s", i, f.Records[i].Raw, byTrace.Records[i].Raw)
		}
	}
}

// Records an older daemon wrote, without trace ids: the op's alone.
func TestAnOpWithoutTraceIsShownAlone(t *testing.T) {
	f := find(t, olderOp, testSources(t))
	if f.TraceID != "" || len(f.Records) != 2 {
		t.Fatalf("trace %q, %d records; want none, the op's 2", f.TraceID, len(f.Records))
	}
	var b bytes.Buffer
	if err := WriteWaterfall(&b, Build(f)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), olderOp+" (no trace id") || !strings.Contains(b.String(), "vm.stop") {
		t.Errorf("waterfall:\n%s", b.String())
	}
}

func TestNothingFound(t *testing.T) {
	for _, id := range []string{"op-01M8TMXWDBCCP12GR6Y9MPZ7PX", "01a2354ed95265bf6c01b5469f5a0899"} {
		if f := find(t, id, testSources(t)); len(f.Records) != 0 {
			t.Errorf("%s: %d records", id, len(f.Records))
		}
	}
}

// Lines that are not banger's records are skipped, whatever they hold,
// and do not hide the records after them; an agent's numeric code reads.
func TestBadLinesAreSkipped(t *testing.T) {
	const op = "op-01M8TMXWDBCCP12GR6Y9MPZ7PT"
	rec := func(fields string) string {
		return `{"level":"info","applet":"banger-agent","op_id":"` + op + `","trace_id":"` + runTrace + `",` + fields + `}`
	}
	log := strings.Join([]string{
		`not json "` + op + `"`,
		rec(`"time":"yesterday","msg":"bad time"`),
		rec(`"time":"2026-12-02T05:51:35.000000Z","msg":"` + strings.Repeat("x", maxLine) + `"`),
		`{"op_id":"` + op + `", truncated`,
		rec(`"time":"2026-12-02T05:51:35.000001Z","msg":"command ended","code":3,"duration_ms":2.5`),
		rec(`"time":"2026-12-02T05:51:35.000002Z","msg":"rpc failed","method":"vm.exec","code":"not_found","duration_ms":1`),
	}, "\n")
	f := find(t, op, []Source{{Name: "x", R: strings.NewReader(log)}})
	if len(f.Records) != 2 || f.Records[0].Code != "3" || f.Records[1].Code != "not_found" {
		t.Fatalf("records %+v", f.Records)
	}
}

// rowIndex is every row of a tree with its parent (nil at the top).
func rowIndex(tr Tree) (rows []*Row, parent map[*Row]*Row) {
	parent = map[*Row]*Row{}
	var add func(rs []*Row, p *Row)
	add = func(rs []*Row, p *Row) {
		for _, r := range rs {
			rows = append(rows, r)
			parent[r] = p
			add(r.Children, r)
		}
	}
	add(tr.Rows, nil)
	return rows, parent
}

func rowNamed(t *testing.T, rows []*Row, name string) *Row {
	t.Helper()
	for _, r := range rows {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no row %q", name)
	return nil
}

// The tree of a `vm run`: a row per call in time order, the polls as
// one, each op's stages and the helper's and the agent's records nested
// under it by time, every record accounted for.
func TestTreeOfARun(t *testing.T) {
	f := find(t, execOp, testSources(t))
	tr := Build(f)
	var top []string
	for _, r := range tr.Rows {
		top = append(top, r.Name)
	}
	if got, want := strings.Join(top, ","), "ping,vm.create.begin,operation.wait,vm.exec,vm.delete"; got != want {
		t.Fatalf("top rows %s, want %s", got, want)
	}
	waits := linesWith(t, `"trace_id":"`+runTrace+`","method":"operation.wait"`)
	if tr.Rows[2].Count != waits || waits < 2 {
		t.Errorf("operation.wait ×%d, want ×%d", tr.Rows[2].Count, waits)
	}
	rows, parent := rowIndex(tr)

	// The create outlived its call: its row runs to its last record (the
	// standby made after it), and says how long the call took.
	create := tr.Rows[1]
	if create.Call < time.Millisecond || create.Call > 2*time.Millisecond {
		t.Errorf("create's call %s, want 1.304ms", create.Call)
	}
	if got := create.End.Format(time.RFC3339Nano); got != "2026-12-02T05:51:36.199388Z" {
		t.Errorf("create ends %s, want at its standby ready", got)
	}
	if create.Start.After(f.Records[1].Time) || tr.Start.After(tr.Rows[0].Start) || !tr.End.Equal(create.End) {
		t.Errorf("create %s..%s, trace %s..%s", create.Start, create.End, tr.Start, tr.End)
	}

	// Nesting by time: the stages in the operation (not in the standby
	// begun among them, which outlives it), the image's stages in
	// resolve image, the helper's call in make disk and its stage in it.
	for child, want := range map[string]string{
		"[resolve image]":             "operation ended",
		"image import stage [kernel]": "[resolve image]",
		"priv.create_tap":             "[make disk]",
		"[create tap]":                "priv.create_tap",
		"command started sh":          "command ended code=3",
		"command ended code=3":        "vm.exec",
		"command's arguments":         "command ended code=3",
		"vm deleted":                  "vm.delete",
		"operation ended":             "vm.create.begin",
		"image import stage [digest]": "[resolve image]",
		"[save warm snapshot]":        "operation ended",
		"[record vm]":                 "operation ended",
		"[wait for agent]":            "operation ended",
		"[agent hello]":               "[make standby]",
		"warm snapshot saved":         "[save warm snapshot]",
		"standby ready":               "vm.create.begin",
		"image import stage [initrd]": "[resolve image]",
		"image import stage [rootfs]": "[resolve image]",
		"image import stage [agent]":  "[resolve image]",
		"[prime guest]":               "[save warm snapshot]",
		"[make standby]":              "vm.create.begin",
	} {
		c := rowNamed(t, rows, child)
		if p := parent[c]; p == nil || p.Name != want {
			t.Errorf("%s is under %v, want %s", child, p, want)
		}
	}
	if r := rowNamed(t, rows, "priv.create_tap"); r.Applet != "bangerd-root" || r.Event {
		t.Errorf("the helper's call: %+v", r)
	}
	if r := rowNamed(t, rows, "command ended code=3"); r.Applet != "banger-agent" || r.End.Sub(r.Start) != 29500*time.Microsecond {
		t.Errorf("the agent's command: %+v", r)
	}

	// Every record is in one row (an op's row is its server's record, a
	// collapsed row its count of them) or counted hidden; a span is a
	// record with duration_ms.
	accounted, spans := tr.Hidden, 0
	for _, r := range rows {
		accounted += r.Count
	}
	for _, r := range f.Records {
		if r.DurationMS != nil {
			spans++
		}
	}
	if accounted != len(f.Records) || tr.Records != len(f.Records) || tr.Spans != spans {
		t.Errorf("%d records accounted for of %d (tree says %d), %d spans (tree says %d)", accounted, len(f.Records), tr.Records, spans, tr.Spans)
	}
	if tr.Hidden == 0 {
		t.Error("no debug record hidden")
	}
	for _, r := range rows {
		if strings.HasPrefix(r.Name, "stage started") {
			t.Errorf("a stage start with its end recorded has a row: %+v", r)
		}
	}
}

func waterfall(t *testing.T, tr Tree) string {
	t.Helper()
	var b bytes.Buffer
	if err := WriteWaterfall(&b, tr); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// checkTerminalSafe fails on a line wider than the waterfall's 100
// columns or a control character other than the newline.
func checkTerminalSafe(t *testing.T, out string) {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if n := utf8.RuneCountInString(l); n > lineWidth {
			t.Errorf("a line of %d columns: %q", n, l)
		}
		if !utf8.ValidString(l) || strings.IndexFunc(l, unicode.IsControl) >= 0 {
			t.Errorf("a control character or bad UTF-8: %q", l)
		}
	}
}

// barOf is the bar column of a waterfall row.
func barOf(line string) string {
	r := []rune(line)
	start := offsetWidth + len(gap) + durWidth + len(gap)
	return string(r[start : start+barWidth])
}

// The waterfall of a run: its header, a row per call in time order with
// the create's stages under it, bars on the scale of the whole trace.
func TestWaterfallOfARun(t *testing.T) {
	tr := Build(find(t, execOp, testSources(t)))
	out := waterfall(t, tr)
	checkTerminalSafe(t, out)
	lines := strings.Split(out, "\n")
	header := strings.Join(lines[:3], "\n")
	if want := "trace " + runTrace + ", the command of " + execOp + "\n" +
		"from 2026-12-02 05:51:29.631773Z, 6.57s: " + strconv.Itoa(tr.Records) + " records, " + strconv.Itoa(tr.Spans) + " spans\n" +
		strconv.Itoa(tr.Hidden) + " debug records not shown (--json prints every record)"; header != want {
		t.Errorf("header:\n%s\nwant:\n%s", header, want)
	}
	if !strings.HasPrefix(lines[4], "   OFFSET  DURATION  0s ") {
		t.Errorf("column header %q", lines[4])
	}
	var order []string
	rows := map[string]string{}
	for _, l := range lines[5:] {
		if l == "" {
			break
		}
		name := strings.TrimSpace(string([]rune(l)[lineWidth-nameWidth:]))
		if !strings.HasPrefix(string([]rune(l)[lineWidth-nameWidth:]), " ") {
			order = append(order, name)
		}
		rows[name] = l
	}
	if got := strings.Join(order, ","); got != "ping,vm.create.begin (call 1.30ms),operation.wait ×7,vm.exec,vm.delete" {
		t.Errorf("top rows %s\n%s", got, out)
	}
	// The create runs the whole trace; the ping, first and short, is a
	// tick at the start; resolve image, first of the create, starts at the
	// start and ends before the middle.
	if b := barOf(rows["vm.create.begin (call 1.30ms)"]); b != strings.Repeat("█", barWidth) {
		t.Errorf("create's bar %q", b)
	}
	if b := barOf(rows["ping"]); b != "▏"+strings.Repeat(" ", barWidth-1) {
		t.Errorf("ping's bar %q", b)
	}
	if b := strings.TrimRight(barOf(rows["[resolve image]"]), " "); !strings.HasPrefix(b, "█") || utf8.RuneCountInString(b) > barWidth/2 {
		t.Errorf("resolve image's bar %q", b)
	}
	if b := barOf(rows["warm snapshot saved"]); strings.Count(b, "•") != 1 {
		t.Errorf("an event's bar %q", b)
	}
	if !strings.Contains(rows["command ended code=3"], "29.5ms") || !strings.Contains(rows["command ended code=3"], "banger-agent") {
		t.Errorf("the agent's command: %q", rows["command ended code=3"])
	}
}

// A failure is marked in its row and said whole, wrapped, below.
func TestWaterfallOfAFailure(t *testing.T) {
	out := waterfall(t, Build(find(t, failTrace, testSources(t))))
	checkTerminalSafe(t, out)
	if !strings.Contains(out, "✗ [resolve image]: unavail") {
		t.Errorf("no failed stage row:\n%s", out)
	}
	_, after, ok := strings.Cut(out, "\nfailures and warnings:\n")
	if !ok || !strings.Contains(strings.Join(strings.Fields(after), " "), "vm.create.begin: stage failed [resolve image]: unavailable: no kernel in /boot (vmlinuz-*); install the Debian package linux-image-amd64") {
		t.Errorf("the failure is not said whole:\n%s", out)
	}
}

// Records may hold what a guest said: escapes, bells, C1 controls, bad
// UTF-8, a megabyte of error, an absurd duration. None of it reaches the
// terminal, nothing breaks the columns, and the output stays small.
func TestWaterfallOfHostileRecords(t *testing.T) {
	const op = "op-01M8TMXWDBCCP12GR6Y9MPZ7PT"
	hostile := "\x1b]0;pwned\x07\x1b[2J\u009b31m\xff\xfeclear\r\n\tme"
	var log strings.Builder
	enc := json.NewEncoder(&log)
	base := map[string]any{"op_id": op, "trace_id": runTrace, "method": "vm.exec"}
	add := func(fields map[string]any) {
		rec := map[string]any{}
		for k, v := range base {
			rec[k] = v
		}
		for k, v := range fields {
			rec[k] = v
		}
		enc.Encode(rec)
	}
	add(map[string]any{"level": "info", "applet": "bangerd", "msg": "rpc completed", "duration_ms": 40.0, "time": "2026-12-02T05:51:35.900000Z"})
	add(map[string]any{"level": "warn", "applet": "banger-agent" + hostile, "msg": hostile, "error": strings.Repeat("E"+hostile, 20000), "program": hostile, "time": "2026-12-02T05:51:35.870000Z"})
	add(map[string]any{"level": "info", "applet": "banger-agent", "msg": "command ended", "stage": hostile, "duration_ms": 1e300, "time": "2026-12-02T05:51:35.880000Z"})
	add(map[string]any{"level": "info", "applet": "banger-agent", "msg": "command ended", "duration_ms": -5, "time": "2026-12-02T05:51:35.890000Z"})
	f := find(t, op, []Source{{Name: "guest", R: strings.NewReader(log.String())}})
	if len(f.Records) != 4 {
		t.Fatalf("%d records", len(f.Records))
	}
	out := waterfall(t, Build(f))
	checkTerminalSafe(t, out)
	if len(out) > 20000 {
		t.Errorf("%d bytes of waterfall", len(out))
	}
	if !strings.Contains(out, "]0;pwned") || !strings.Contains(out, "failures and warnings:") {
		t.Errorf("the hostile record's text (filtered) is not shown:\n%s", out)
	}
	// The absurd duration is bounded: the trace lasts maxSpan, not ages.
	if tr := Build(f); tr.End.Sub(tr.Start) > maxSpan+time.Second {
		t.Errorf("the trace lasts %s", tr.End.Sub(tr.Start))
	}
}

// A stage whose end was never recorded (a crash, or work still going on)
// shows its start.
func TestAStageWithoutEndShowsItsStart(t *testing.T) {
	const op = "op-01M8TMXWDBCCP12GR6Y9MPZ7PT"
	log := `{"level":"debug","applet":"bangerd","op_id":"` + op + `","trace_id":"` + runTrace + `","method":"vm.create.begin","stage":"make standby","time":"2026-12-02T05:51:38.601182Z","msg":"stage started"}
{"level":"debug","applet":"bangerd","op_id":"` + op + `","trace_id":"` + runTrace + `","method":"vm.create.begin","stage":"take standby","time":"2026-12-02T05:51:38.602000Z","msg":"stage started"}
{"level":"info","applet":"bangerd","op_id":"` + op + `","trace_id":"` + runTrace + `","method":"vm.create.begin","stage":"take standby","duration_ms":1.5,"time":"2026-12-02T05:51:38.603500Z","msg":"stage completed"}
`
	tr := Build(find(t, op, []Source{{Name: "x", R: strings.NewReader(log)}}))
	rows, _ := rowIndex(tr)
	var names []string
	for _, r := range rows {
		names = append(names, r.Name)
	}
	if got := strings.Join(names, ","); got != "vm.create.begin,stage started [make standby],[take standby]" || tr.Hidden != 1 {
		t.Errorf("rows %s, %d hidden", got, tr.Hidden)
	}
}

// --json's records are the raw lines, one each, in time order.
func TestWriteJSON(t *testing.T) {
	f := find(t, runTrace, testSources(t))
	var b bytes.Buffer
	if err := WriteJSON(&b, f.Records); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(&b)
	n := 0
	var last time.Time
	for sc.Scan() {
		var r struct {
			Time    time.Time `json:"time"`
			TraceID string    `json:"trace_id"`
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil || r.TraceID != runTrace || r.Time.Before(last) {
			t.Errorf("line %d: %v %+v: %s", n, err, r, sc.Bytes())
		}
		last = r.Time
		n++
	}
	if n != len(f.Records) {
		t.Errorf("%d lines of %d records", n, len(f.Records))
	}
}

func TestFmtDur(t *testing.T) {
	for d, want := range map[time.Duration]string{
		130 * time.Microsecond:    "0.13ms",
		30 * time.Millisecond:     "30.0ms",
		6570 * time.Millisecond:   "6.57s",
		125 * time.Second:         "2m05s",
		3*time.Hour + time.Minute: "3h01m",
		maxSpan:                   "168h00m",
	} {
		if got := fmtDur(d); got != want || len(got) > durWidth {
			t.Errorf("fmtDur(%s) = %q, want %q", d, got, want)
		}
	}
}

// The agent's records carry the guest's clock, here 0.8 s behind the
// host's (as a TCG guest's was): they stay under their op but do not
// stretch it, and the scale holds them. An op known only by an event (its
// server's records at debug, the log at info) is a point.
func TestGuestClockAndPointOps(t *testing.T) {
	const exec, del = "op-01M8TNN5DRVB0ZYSJMJ4X29CT4", "op-01M8TNN5ECKBXAEX253NB2DSQ7"
	log := `{"level":"info","applet":"banger-agent","time":"2026-12-02T06:04:17.953393Z","vm":"vm-eqbksz","op_id":"` + exec + `","trace_id":"` + runTrace + `","method":"agent.exec","pid":100,"program":"sh","pty":false,"msg":"command started"}
{"level":"info","applet":"banger-agent","time":"2026-12-02T06:04:17.963720Z","vm":"vm-eqbksz","op_id":"` + exec + `","trace_id":"` + runTrace + `","method":"agent.exec","code":3,"duration_ms":13.682,"pid":-1,"signal":0,"msg":"command ended"}
{"level":"info","applet":"bangerd","op_id":"` + exec + `","trace_id":"` + runTrace + `","method":"vm.exec","duration_ms":19.439,"uid":0,"pid":27049,"time":"2026-12-02T06:04:18.763529Z","msg":"session ended"}
{"level":"info","applet":"bangerd","trace_id":"` + runTrace + `","op_id":"` + del + `","method":"vm.delete","vm":"vm-eqbksz","time":"2026-12-02T06:04:18.769324Z","msg":"vm deleted"}
`
	tr := Build(find(t, runTrace, []Source{{Name: "x", R: strings.NewReader(log)}}))
	if len(tr.Rows) != 2 {
		t.Fatalf("%d top rows", len(tr.Rows))
	}
	ex, dl := tr.Rows[0], tr.Rows[1]
	if ex.Name != "vm.exec" || ex.Total != 19439*time.Microsecond || ex.Call != 0 || len(ex.Children) != 1 || ex.Children[0].Name != "command ended code=3" {
		t.Errorf("the exec's row %+v", ex)
	}
	if got := tr.Start.Format(time.RFC3339Nano); got != "2026-12-02T06:04:17.950038Z" {
		t.Errorf("the trace starts %s, want at the agent's command", got)
	}
	if dl.Name != "vm.delete" || !dl.Event || len(dl.Children) != 1 {
		t.Errorf("the delete's row %+v", dl)
	}
	out := waterfall(t, tr)
	checkTerminalSafe(t, out)
	// The exec at its own time, the delete a point without a duration.
	for _, l := range strings.Split(out, "\n") {
		if strings.HasSuffix(l, "vm.exec") && !strings.HasPrefix(l, " +794.1ms    19.4ms ") ||
			strings.HasSuffix(l, "vm.delete") && strings.Count(l, "ms") != 1 {
			t.Errorf("row %q in:\n%s", l, out)
		}
	}
}

// At the daemon's default level its server's records (debug) are not
// there: the op is still the daemon's, named by its method, and the
// helper's calls ("helper rpc completed") are inside its stages, not the
// op itself.
func TestAnOpWithoutItsServersRecord(t *testing.T) {
	const op = "op-01M8TNX02WMWNQZYCBYVKWJ853"
	rec := func(applet, fields string) string {
		return `{"level":"info","applet":"` + applet + `","op_id":"` + op + `","trace_id":"` + runTrace + `",` + fields + "}\n"
	}
	log := rec("bangerd-root", `"method":"priv.ensure_bridge","duration_ms":1.711,"uid":0,"time":"2026-12-02T06:08:38.090500Z","msg":"helper rpc completed"`) +
		rec("bangerd", `"method":"vm.create.begin","stage":"ensure bridge","duration_ms":2.27,"time":"2026-12-02T06:08:38.091000Z","msg":"stage completed"`) +
		rec("bangerd-root", `"method":"priv.create_tap","duration_ms":2.07,"uid":0,"time":"2026-12-02T06:08:38.094000Z","msg":"helper rpc completed"`) +
		rec("bangerd", `"method":"vm.create.begin","stage":"create tap","duration_ms":2.62,"time":"2026-12-02T06:08:38.094500Z","msg":"stage completed"`)
	tr := Build(find(t, op, []Source{{Name: "x", R: strings.NewReader(log)}}))
	rows, parent := rowIndex(tr)
	if len(tr.Rows) != 1 || tr.Rows[0].Name != "vm.create.begin" || tr.Rows[0].Applet != "bangerd" || tr.Rows[0].Event {
		t.Fatalf("top rows %+v", tr.Rows)
	}
	for child, want := range map[string]string{"priv.ensure_bridge": "[ensure bridge]", "priv.create_tap": "[create tap]", "[create tap]": "vm.create.begin"} {
		if p := parent[rowNamed(t, rows, child)]; p == nil || p.Name != want {
			t.Errorf("%s is under %+v, want %s", child, p, want)
		}
	}
}

// A malformed trace_id is no trace: the op's records alone, and nothing
// of it reaches the terminal.
func TestAMalformedTraceIDIsNoTrace(t *testing.T) {
	const op = "op-01M8TNX02WMWNQZYCBYVKWJ853"
	log := `{"level":"info","applet":"bangerd","op_id":"` + op + `","trace_id":"\u001b[2J","method":"vm.exec","duration_ms":2,"time":"2026-12-02T06:08:38.090500Z","msg":"session ended"}
{"level":"info","applet":"bangerd","op_id":"op-01M8TNX02WMWNQZYCBYVKWJ854","trace_id":"\u001b[2J","method":"vm.exec","duration_ms":2,"time":"2026-12-02T06:08:38.090500Z","msg":"session ended"}
`
	f := find(t, op, []Source{{Name: "x", R: strings.NewReader(log)}})
	if f.TraceID != "" || len(f.Records) != 1 {
		t.Fatalf("trace %q, %d records", f.TraceID, len(f.Records))
	}
	checkTerminalSafe(t, waterfall(t, Build(f)))
}
