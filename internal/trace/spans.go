package trace

import (
	"slices"
	"sort"
	"strings"
	"time"

	"banger/internal/api"
)

// Tree is a trace laid out as rows: one per op id (one call of the
// command) in time order, each with its stages and the helper's and the
// agent's records under it, nested by time.
type Tree struct {
	ID         string // what was asked for: an op id or a trace id
	TraceID    string // "": one op's records, written without a trace id
	Start, End time.Time
	Records    int // all of them, shown as rows or not
	Spans      int // records that end a span (they have duration_ms)
	Hidden     int // debug records no row shows
	Rows       []*Row
}

// Row is one row of the waterfall: a span, or an event (a record without
// duration_ms, a point in time), with the rows under it.
type Row struct {
	Name       string // what the row says, from the record: printable before printing
	Detail     string // all the record says, for a failure's line (describe)
	Applet     string
	Start, End time.Time
	Event      bool
	Failed     bool          // a failure or a warning
	Call       time.Duration // an op that outlived its call (an operation): how long the call took
	Count      int           // rows collapsed into this one: identical leaves side by side
	Total      time.Duration // their durations added up
	Parts      []interval    // their times, for the bar
	Children   []*Row
}

type interval struct{ start, end time.Time }

// What logging.Stage writes.
const (
	msgStageStarted   = "stage started"
	msgStageCompleted = "stage completed"
	msgStageFailed    = "stage failed"
)

// serverEnds end the messages of a server's record of a call (rpc's
// defaults; rpc.CallLog lets each server choose its own: "helper rpc
// failed", "agent rpc completed", the daemon's stream server's "session
// ended").
var serverEnds = []string{"rpc completed", "rpc failed", "session ended", "session failed"}

// nestSlack is how far a child's computed start may fall before its
// parent's: a start is a record's time less its duration, each rounded
// to the microsecond, and a record is written just after its duration is
// taken.
const nestSlack = 20 * time.Microsecond

// maxSpan bounds a record's duration_ms: a bad one (a guest's) must not
// stretch the trace over years or overflow a time.Duration.
const maxSpan = 7 * 24 * time.Hour

// Build lays found's records out as rows: one per op id, in time order,
// with its spans and events nested under it by time containment, and
// identical leaves side by side (operation.wait polls) collapsed into one.
func Build(f Found) Tree {
	t := Tree{ID: f.ID, TraceID: f.TraceID, Records: len(f.Records)}
	ends := stageEnds(f.Records)
	var rows []*Row
	for _, op := range byOp(f.Records) {
		r, hidden := opRows(op, ends)
		rows = append(rows, r...)
		t.Hidden += hidden
	}
	for _, r := range f.Records {
		if r.DurationMS != nil {
			t.Spans++
		}
	}
	sortRows(rows)
	t.Rows = collapse(rows)
	// The scale holds every row: an agent's row may fall outside its op's.
	first := true
	walk(t.Rows, 0, func(r *Row, _ int) {
		if first || r.Start.Before(t.Start) {
			t.Start = r.Start
		}
		if first || r.End.After(t.End) {
			t.End = r.End
		}
		first = false
	})
	return t
}

// byOp groups records by op id, in the order of each op's first record.
func byOp(recs []Record) [][]Record {
	index := map[string]int{}
	var ops [][]Record
	for _, r := range recs {
		i, ok := index[r.OpID]
		if !ok {
			i = len(ops)
			index[r.OpID] = i
			ops = append(ops, nil)
		}
		ops[i] = append(ops[i], r)
	}
	return ops
}

// opRows is the row of one op, its records nested under it, and how many
// of them no row shows. The op's row is its server's record
// (serverRecord) stretched over the op's rows (stretch). Records without
// an op id are rows of their own.
func opRows(recs []Record, ends map[string][]time.Time) ([]*Row, int) {
	root := serverRecord(recs)
	var items []*Row
	hidden := 0
	for i, r := range recs {
		switch {
		case i == root:
		case r.DurationMS != nil || shown(r, ends):
			items = append(items, recordRow(r))
		default:
			hidden++
		}
	}
	children := nest(items)
	if recs[0].OpID == "" {
		return children, hidden
	}
	var op *Row
	if root >= 0 {
		op = recordRow(recs[root])
	} else {
		op = &Row{Count: 1}
		op.Name, op.Applet = opIdentity(recs)
	}
	call := op.End.Sub(op.Start)
	stretch(op, items, root >= 0, recs[0].Time)
	if root >= 0 && op.End.Sub(op.Start)-call > time.Millisecond {
		op.Call = call
	}
	// An op known only by events (its server logs its calls at debug)
	// has no duration of record: it is a point, not a span of 0.
	op.Event = root < 0 && !op.End.After(op.Start)
	op.Children = children
	op.Parts, op.Total = []interval{{op.Start, op.End}}, op.End.Sub(op.Start)
	return []*Row{op}, hidden
}

// stretch makes an op's row hold its rows: an operation goes on after
// the call that began it returned. The agent's rows stretch it only when
// it has nothing else: their times are the guest's clock, which may be
// seconds off the host's (an op without any row is at its first record).
func stretch(op *Row, items []*Row, rooted bool, first time.Time) {
	set := rooted
	for _, guest := range []bool{false, true} {
		for _, c := range items {
			switch {
			case (c.Applet == api.AppletAgent) != guest:
			case !set:
				op.Start, op.End, set = c.Start, c.End, true
			default:
				op.Start, op.End = minTime(op.Start, c.Start), maxTime(op.End, c.End)
			}
		}
		if set {
			return
		}
	}
	op.Start, op.End = first, first
}

// serverRecord is the index of the record of the op's own call, or -1:
// the daemon's server's; in a log of the helper alone, the helper's. An
// op of the daemon whose server's record is not there (it logs calls at
// debug) has none: the helper's and the agent's calls are inside it.
func serverRecord(recs []Record) int {
	found, daemon := -1, false
	for i, r := range recs {
		daemon = daemon || r.Applet == api.AppletDaemon
		if !isServer(r) {
			continue
		}
		if r.Applet == api.AppletDaemon {
			return i
		}
		if found < 0 {
			found = i
		}
	}
	if daemon {
		return -1
	}
	return found
}

func isServer(r Record) bool {
	return r.DurationMS != nil && r.Method != "" && r.Stage == "" &&
		slices.ContainsFunc(serverEnds, func(end string) bool { return strings.HasSuffix(r.Msg, end) })
}

// opIdentity is the method and applet of an op without its server's
// record: the daemon's when it wrote any of the op, else the first
// record's with a method.
func opIdentity(recs []Record) (method, applet string) {
	method, applet = recs[0].Msg, recs[0].Applet
	found := false
	for _, r := range recs {
		switch {
		case r.Method != "" && r.Applet == api.AppletDaemon:
			return r.Method, r.Applet
		case r.Applet == api.AppletDaemon:
			applet = r.Applet
		case r.Method != "" && !found:
			method, found = r.Method, true
		}
	}
	return method, applet
}

// shown tells whether an event (a record without duration_ms) gets a row:
// a stage's start only when no end of it was recorded (a crash, or work
// still going on), the agent's records all, others from info up, so that
// what debug adds (the polls' details) does not drown the waterfall.
func shown(r Record, ends map[string][]time.Time) bool {
	switch {
	case r.Msg == msgStageStarted:
		return !ended(r, ends)
	case r.Applet == api.AppletAgent:
		return true
	}
	return r.Level != "debug" && r.Level != "trace"
}

// stageEnds are the computed starts of the stages that ended, by op and
// stage name, to match their "stage started" records with.
func stageEnds(recs []Record) map[string][]time.Time {
	ends := map[string][]time.Time{}
	for _, r := range recs {
		if isStageEnd(r) {
			k := r.OpID + "\x00" + r.Stage
			ends[k] = append(ends[k], spanStart(r))
		}
	}
	return ends
}

func isStageEnd(r Record) bool {
	return r.DurationMS != nil && r.Stage != "" && (r.Msg == msgStageCompleted || r.Msg == msgStageFailed)
}

// ended tells whether a "stage started" record has its end: one of the
// same stage of the op that started within a millisecond of it.
func ended(r Record, ends map[string][]time.Time) bool {
	for _, s := range ends[r.OpID+"\x00"+r.Stage] {
		if d := s.Sub(r.Time); d > -time.Millisecond && d < time.Millisecond {
			return true
		}
	}
	return false
}

// recordRow is the row of one record: a span when it has duration_ms,
// else an event.
func recordRow(r Record) *Row {
	row := &Row{Name: label(r), Detail: describe(r), Applet: r.Applet, Start: spanStart(r), End: r.Time, Event: r.DurationMS == nil, Count: 1,
		Failed: strings.HasSuffix(r.Msg, " failed") || r.Level == "warn" || r.Level == "error" || r.Level == "fatal" || r.Level == "panic"}
	row.Parts, row.Total = []interval{{row.Start, row.End}}, row.End.Sub(row.Start)
	return row
}

// spanStart is when a record's span began: its time less its duration,
// bounded (maxSpan); an event's time.
func spanStart(r Record) time.Time {
	if r.DurationMS == nil || !(*r.DurationMS > 0) {
		return r.Time
	}
	d := maxSpan
	if *r.DurationMS < float64(maxSpan/time.Millisecond) {
		d = time.Duration(*r.DurationMS * float64(time.Millisecond))
	}
	return r.Time.Add(-d)
}

// label is what a record's row says: a call's method, a stage's name in
// brackets (as a stage is named wherever it is a detail), else the
// message, with what the record adds (details).
func label(r Record) string {
	switch {
	case isServer(r):
		return r.Method + details(r, false)
	case isStageEnd(r):
		return "[" + r.Stage + "]" + details(r, false)
	}
	return r.Msg + details(r, r.Stage != "")
}

// details is what a record adds to its name: its stage (when the name is
// not that), program, code and error.
func details(r Record, stage bool) string {
	var b strings.Builder
	if stage {
		b.WriteString(" [" + r.Stage + "]")
	}
	if r.Program != "" {
		b.WriteString(" " + r.Program)
	}
	if r.Code != "" {
		b.WriteString(" code=" + r.Code)
	}
	if r.Error != "" {
		b.WriteString(": " + r.Error)
	}
	return b.String()
}

// describe is all a record says, for a failure: its method, message,
// stage, code and error.
func describe(r Record) string {
	s := r.Msg
	if r.Method != "" {
		s = r.Method + ": " + s
	}
	return s + details(r, r.Stage != "")
}

// nest puts each row under the span that holds it in time and ends
// first, and returns the rows no span holds. For spans that nest, that is
// the innermost; for work that runs concurrently within one op, which has
// no parent of record, it keeps the op's own steps out of a background
// task begun among them (a standby made while the create goes on), which
// outlives them.
func nest(items []*Row) []*Row {
	sortRows(items)
	var roots, open []*Row
	for _, it := range items {
		// A span that ended before this row started holds nothing after it.
		open = slices.DeleteFunc(open, func(p *Row) bool { return p.End.Add(nestSlack).Before(it.Start) })
		var parent *Row
		for _, p := range open {
			if holds(p, it) && (parent == nil || !p.End.After(parent.End)) {
				parent = p
			}
		}
		if parent != nil {
			parent.Children = append(parent.Children, it)
		} else {
			roots = append(roots, it)
		}
		if !it.Event {
			open = append(open, it)
		}
	}
	return roots
}

func holds(p, c *Row) bool {
	return !c.Start.Before(p.Start.Add(-nestSlack)) && !c.End.After(p.End.Add(nestSlack))
}

// sortRows orders rows by start, a longer span before what it holds, and
// a span before an event of the same instant.
func sortRows(rows []*Row) {
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if !a.Start.Equal(b.Start) {
			return a.Start.Before(b.Start)
		}
		if !a.End.Equal(b.End) {
			return a.End.After(b.End)
		}
		return !a.Event && b.Event
	})
}

// collapse merges identical leaves side by side (the same name, applet
// and kind, nothing under them: a client's polls) into one row with their
// count, at every level.
func collapse(rows []*Row) []*Row {
	var out []*Row
	for _, r := range rows {
		r.Children = collapse(r.Children)
		if n := len(out); n > 0 && sameLeaf(out[n-1], r) {
			last := out[n-1]
			last.Count += r.Count
			last.Total += r.Total
			last.Parts = append(last.Parts, r.Parts...)
			last.End = maxTime(last.End, r.End)
			continue
		}
		out = append(out, r)
	}
	return out
}

func sameLeaf(a, b *Row) bool {
	return len(a.Children) == 0 && len(b.Children) == 0 && a.Call == 0 && b.Call == 0 &&
		a.Name == b.Name && a.Applet == b.Applet && a.Event == b.Event && a.Failed == b.Failed
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
