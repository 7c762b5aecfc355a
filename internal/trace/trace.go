// Package trace gathers the log records of one command from the daemon's,
// the helper's and the agent's JSON logs, the records of its whole trace
// (every call of the command, by trace_id), and lays them out as a
// waterfall of spans: the operator's answer to "what happened to my
// command, and where did its time go". It only reads; what it prints of a
// record goes through printable, as a record may hold what a guest said.
package trace

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"banger/rpc"
)

// Source is one log to read: a file or journalctl's output.
type Source struct {
	Name string
	R    io.Reader
}

// Record is one log record of the trace (or of the op id).
type Record struct {
	Time       time.Time
	Applet     string
	Level      string
	Msg        string
	OpID       string
	TraceID    string
	Method     string
	Stage      string
	Code       string // the wire code, or an exit status ("0" is dropped)
	Error      string
	Program    string   // the program an agent's command ran
	DurationMS *float64 // set on a record that ends a span
	Source     string
	Raw        json.RawMessage
}

// Found is what Find found: the records of a trace, or of one op id alone
// when they were written without a trace id (by an older banger).
type Found struct {
	ID      string // what was asked for: an op id or a trace id
	TraceID string // "": the op's records alone
	Records []Record
}

// maxLine bounds one log line (a panic's stack can be long); a longer
// line is skipped, not an error, so one bad line cannot hide a trace.
const maxLine = 4 << 20

// Find returns the records of id, an op id ("op-...") or a trace id, from
// every source, in time order (records at the same instant keep their
// source order). For an op id it finds the op's trace and returns the
// whole trace; an op without a trace id is returned alone. Lines that are
// not JSON records are skipped.
func Find(id string, sources []Source) (Found, error) {
	logs, err := readAll(sources)
	if err != nil {
		return Found{}, err
	}
	f := Found{ID: id}
	if !strings.HasPrefix(id, "op-") {
		f.TraceID = id
		f.Records = scan(logs, id, func(r Record) bool { return r.TraceID == id })
		return f, nil
	}
	op := scan(logs, id, func(r Record) bool { return r.OpID == id })
	for _, r := range op {
		// A malformed trace_id is no trace to gather (and not text for
		// a terminal).
		if rpc.ValidTraceID(r.TraceID) {
			f.TraceID = r.TraceID
			break
		}
	}
	if f.TraceID == "" {
		f.Records = op
		return f, nil
	}
	// The trace, and any record of the op written without it (by an
	// older helper).
	f.Records = scan(logs, f.TraceID, func(r Record) bool { return r.TraceID == f.TraceID })
	for _, r := range op {
		if r.TraceID == "" {
			f.Records = append(f.Records, r)
		}
	}
	sortByTime(f.Records)
	return f, nil
}

// log is one source read whole: Find reads each twice (the op, then its
// trace), and a journal cannot be read again.
type log struct {
	name string
	data []byte
}

func readAll(sources []Source) ([]log, error) {
	logs := make([]log, 0, len(sources))
	for _, src := range sources {
		b, err := io.ReadAll(src.R)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", src.Name, err)
		}
		logs = append(logs, log{src.Name, b})
	}
	return logs, nil
}

// scan returns the records of the lines that hold the quoted id and that
// keep accepts, in time order. Only those lines are decoded: a rotated
// log is megabytes of other calls.
func scan(logs []log, id string, keep func(Record) bool) []Record {
	var recs []Record
	needle := []byte(`"` + id + `"`)
	for _, l := range logs {
		for data := l.data; len(data) > 0; {
			line := data
			if i := bytes.IndexByte(data, '\n'); i >= 0 {
				line, data = data[:i], data[i+1:]
			} else {
				data = nil
			}
			if len(line) > maxLine || !bytes.Contains(line, needle) {
				continue
			}
			if rec, ok := parse(line); ok && keep(rec) {
				rec.Source = l.name
				recs = append(recs, rec)
			}
		}
	}
	sortByTime(recs)
	return recs
}

func sortByTime(recs []Record) {
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].Time.Before(recs[j].Time) })
}

// parse decodes one record. One without a time is not banger's: it has
// no place in a timeline.
func parse(line []byte) (Record, bool) {
	var f struct {
		Time       string          `json:"time"`
		Applet     string          `json:"applet"`
		Level      string          `json:"level"`
		Msg        string          `json:"msg"`
		OpID       string          `json:"op_id"`
		TraceID    string          `json:"trace_id"`
		Method     string          `json:"method"`
		Stage      string          `json:"stage"`
		Code       json.RawMessage `json:"code"`
		Error      string          `json:"error"`
		Program    string          `json:"program"`
		DurationMS *float64        `json:"duration_ms"`
	}
	if err := json.Unmarshal(line, &f); err != nil {
		return Record{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, f.Time)
	if err != nil {
		return Record{}, false
	}
	return Record{
		Time: t, Applet: f.Applet, Level: f.Level, Msg: f.Msg, OpID: f.OpID, TraceID: f.TraceID,
		Method: f.Method, Stage: f.Stage, Code: codeText(f.Code), Error: f.Error, Program: f.Program,
		DurationMS: f.DurationMS, Raw: append(json.RawMessage(nil), line...),
	}, true
}

// codeText is a record's code as text: a wire code is a string, an
// agent's exit status a number (0, success, says nothing).
func codeText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil && n != "0" {
		return n.String()
	}
	return ""
}

// WriteJSON writes the raw records, one per line.
func WriteJSON(w io.Writer, recs []Record) error {
	for _, r := range recs {
		if _, err := w.Write(append(r.Raw, '\n')); err != nil {
			return err
		}
	}
	return nil
}
