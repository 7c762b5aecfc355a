// Package trace gathers the log records of one op id from the daemon's and
// the helper's JSON logs and lays them out as one timeline: the operator's
// answer to "what happened to my command". It only reads.
package trace

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"banger/internal/printable"
)

// Source is one log to read: a file or journalctl's output.
type Source struct {
	Name string
	R    io.Reader
}

// Record is one log record of the op id.
type Record struct {
	Time       time.Time       `json:"-"`
	Applet     string          `json:"-"`
	Level      string          `json:"-"`
	Msg        string          `json:"-"`
	Method     string          `json:"-"`
	Stage      string          `json:"-"`
	Code       string          `json:"-"`
	Error      string          `json:"-"`
	DurationMS *float64        `json:"-"`
	Source     string          `json:"-"`
	Raw        json.RawMessage `json:"-"`
}

// maxLine bounds one log line (a panic's stack can be long).
const maxLine = 4 << 20

// Collect returns the records of opID from every source, in time order
// (records at the same instant keep their source order). Lines that are not
// JSON records are skipped.
func Collect(opID string, sources []Source) ([]Record, error) {
	var recs []Record
	needle := []byte(`"` + opID + `"`)
	for _, src := range sources {
		sc := bufio.NewScanner(src.R)
		sc.Buffer(make([]byte, 64<<10), maxLine)
		for sc.Scan() {
			line := sc.Bytes()
			if !bytes.Contains(line, needle) {
				continue
			}
			rec, ok := parse(line)
			if !ok || rec.opID != opID {
				continue
			}
			rec.Source = src.Name
			recs = append(recs, rec.Record)
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("read %s: %w", src.Name, err)
		}
	}
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].Time.Before(recs[j].Time) })
	return recs, nil
}

type parsed struct {
	Record
	opID string
}

func parse(line []byte) (parsed, bool) {
	var f struct {
		Time       string   `json:"time"`
		Applet     string   `json:"applet"`
		Level      string   `json:"level"`
		Msg        string   `json:"msg"`
		OpID       string   `json:"op_id"`
		Method     string   `json:"method"`
		Stage      string   `json:"stage"`
		Code       string   `json:"code"`
		Error      string   `json:"error"`
		DurationMS *float64 `json:"duration_ms"`
	}
	if err := json.Unmarshal(line, &f); err != nil {
		return parsed{}, false
	}
	t, _ := time.Parse(time.RFC3339Nano, f.Time)
	return parsed{
		opID: f.OpID,
		Record: Record{
			Time: t, Applet: f.Applet, Level: f.Level, Msg: f.Msg, Method: f.Method,
			Stage: f.Stage, Code: f.Code, Error: f.Error, DurationMS: f.DurationMS,
			Raw: append(json.RawMessage(nil), line...),
		},
	}, true
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

// WriteTimeline writes a readable timeline: offset from the first record,
// applet, method, what happened, stage and duration.
func WriteTimeline(w io.Writer, opID string, recs []Record) error {
	if len(recs) == 0 {
		return nil
	}
	first := recs[0].Time
	span := recs[len(recs)-1].Time.Sub(first)
	fmt.Fprintf(w, "%s  %s  %d records over %s\n", opID, first.Format("2006-01-02 15:04:05.000000Z07:00"), len(recs), fmtMillis(float64(span.Microseconds())/1000))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "OFFSET\tAPPLET\tLEVEL\tMETHOD\tEVENT\tDURATION")
	for _, r := range recs {
		offset := float64(r.Time.Sub(first).Microseconds()) / 1000
		dur := ""
		if r.DurationMS != nil {
			dur = fmtMillis(*r.DurationMS)
		}
		// A record's fields may hold what a guest said (an error, a
		// console's end): no control character of theirs reaches the
		// terminal.
		fmt.Fprintf(tw, "+%s\t%s\t%s\t%s\t%s\t%s\n", fmtMillis(offset), printable.String(r.Applet, 0), printable.String(r.Level, 0),
			dash(printable.String(r.Method, 0)), printable.String(event(r), 0), dur)
	}
	return tw.Flush()
}

// event is the record's message with the details that matter.
func event(r Record) string {
	var b strings.Builder
	b.WriteString(r.Msg)
	if r.Stage != "" {
		b.WriteString(" [" + r.Stage + "]")
	}
	if r.Code != "" {
		b.WriteString(" code=" + r.Code)
	}
	if r.Error != "" {
		b.WriteString(": " + r.Error)
	}
	return b.String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func fmtMillis(ms float64) string {
	if ms >= 1000 {
		return fmt.Sprintf("%.3fs", ms/1000)
	}
	return fmt.Sprintf("%.3fms", ms)
}
