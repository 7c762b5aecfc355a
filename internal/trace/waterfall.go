package trace

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"banger/internal/printable"
)

// The waterfall's columns: it fits a terminal of 100 columns.
const (
	lineWidth   = 100
	offsetWidth = 9
	durWidth    = 8
	barWidth    = 30
	appletWidth = 12
	nameWidth   = lineWidth - offsetWidth - durWidth - barWidth - appletWidth - 4*len(gap)
	gap         = "  "
)

// WriteWaterfall writes t as a waterfall: a header (the trace, its start,
// its records and spans, its whole duration), then a row per span or
// event in time order, indented under its parent, with its offset from
// the trace's start, a bar on the scale of the whole trace, its duration,
// its applet and its name.
func WriteWaterfall(w io.Writer, t Tree) error {
	var b bytes.Buffer
	total := t.End.Sub(t.Start)
	id, trace := printable.String(t.ID, 0), printable.String(t.TraceID, 0)
	switch {
	case trace == "":
		fmt.Fprintf(&b, "%s (no trace id: the op's records alone)\n", id)
	case trace != id:
		fmt.Fprintf(&b, "trace %s, the command of %s\n", trace, id)
	default:
		fmt.Fprintf(&b, "trace %s\n", trace)
	}
	fmt.Fprintf(&b, "from %s, %s: %s, %s\n", stamp(t.Start), fmtDur(total), plural(t.Records, "record"), plural(t.Spans, "span"))
	if t.Hidden > 0 {
		fmt.Fprintf(&b, "%s not shown (--json prints every record)\n", plural(t.Hidden, "debug record"))
	}
	b.WriteString("\n")
	scale := "0s" + strings.Repeat(" ", max(1, barWidth-2-len(fmtDur(total)))) + fmtDur(total)
	b.WriteString(columns("OFFSET", "DURATION", scale, "APPLET", "NAME"))
	var failed []*Row
	walk(t.Rows, 0, func(r *Row, depth int) {
		b.WriteString(rowLine(r, t.Start, total, depth))
		if r.Failed {
			failed = append(failed, r)
		}
	})
	writeFailures(&b, failed, t.Start)
	_, err := w.Write(b.Bytes())
	return err
}

// walk calls fn on each row, depth first, with its depth.
func walk(rows []*Row, depth int, fn func(r *Row, depth int)) {
	for _, r := range rows {
		fn(r, depth)
		walk(r.Children, depth+1, fn)
	}
}

// maxFailure bounds what is printed of one failure: enough for any error
// banger writes, not a guest's megabyte.
const maxFailure = 2000

// writeFailures lists the failures and warnings again with their whole
// text, wrapped at the line's width: a row cuts its error to its column,
// and the error is what the operator came for.
func writeFailures(b *bytes.Buffer, failed []*Row, start time.Time) {
	if len(failed) == 0 {
		return
	}
	b.WriteString("\nfailures and warnings:\n")
	for _, r := range failed {
		prefix := fmt.Sprintf("%*s%s%-*s%s", offsetWidth, "+"+fmtDur(r.Start.Sub(start)), gap, appletWidth, fit(printable.String(r.Applet, 0), appletWidth), gap)
		for i, l := range wrap(printable.String(r.Detail, maxFailure), lineWidth-len(prefix)) {
			if i > 0 {
				prefix = strings.Repeat(" ", len(prefix))
			}
			b.WriteString(prefix + l + "\n")
		}
	}
}

// wrap cuts s into lines of at most n columns (runes), at a space when
// one is near the end of the line.
func wrap(s string, n int) []string {
	var lines []string
	r := []rune(s)
	for len(r) > n {
		cut := n
		for i := n; i > n*2/3; i-- {
			if r[i] == ' ' {
				cut = i
				break
			}
		}
		lines = append(lines, strings.TrimRight(string(r[:cut]), " "))
		r = []rune(strings.TrimLeft(string(r[cut:]), " "))
	}
	return append(lines, string(r))
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// columns is one line of the waterfall, each field in its column.
func columns(offset, dur, bar, applet, name string) string {
	line := fmt.Sprintf("%*s%s%*s%s%-*s%s%-*s%s%s", offsetWidth, offset, gap, durWidth, dur, gap,
		barWidth, bar, gap, appletWidth, applet, gap, name)
	return strings.TrimRight(line, " ") + "\n"
}

// rowLine is one row: everything taken from its records made printable
// (they may hold what a guest said) and cut to its column.
func rowLine(r *Row, start time.Time, total time.Duration, depth int) string {
	dur := ""
	if !r.Event {
		dur = fmtDur(r.Total)
	}
	mark := ""
	switch {
	case r.Failed && r.Event:
		mark = "! "
	case r.Failed:
		mark = "✗ "
	}
	name := mark + printable.String(r.Name, 0)
	if r.Call > 0 {
		name += " (call " + fmtDur(r.Call) + ")"
	}
	if r.Count > 1 {
		name += fmt.Sprintf(" ×%d", r.Count)
	}
	indent := strings.Repeat(" ", min(2*depth, nameWidth/2))
	return columns("+"+fmtDur(r.Start.Sub(start)), dur, bar(r, start, total),
		fit(printable.String(r.Applet, 0), appletWidth), indent+fit(name, nameWidth-len(indent)))
}

// bar draws a row's times on the trace's scale: a block per cell a span
// covers ('▏' for one too short to fill half a cell), a dot at an event.
func bar(r *Row, start time.Time, total time.Duration) string {
	cells := []rune(strings.Repeat(" ", barWidth))
	total = max(total, time.Microsecond)
	cell := func(t time.Time) float64 { return float64(t.Sub(start)) / float64(total) * barWidth }
	for _, p := range r.Parts {
		a := min(int(cell(p.start)), barWidth-1)
		if r.Event {
			cells[a] = '•'
			continue
		}
		end := cell(p.end)
		if end-cell(p.start) < 0.5 {
			if cells[a] == ' ' {
				cells[a] = '▏'
			}
			continue
		}
		for i := max(a, 0); i < barWidth && float64(i) < end; i++ {
			cells[i] = '█'
		}
	}
	return string(cells)
}

// fit cuts s to n columns (runes), a cut marked with "…".
func fit(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:max(n-1, 0)]) + "…"
}

func stamp(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000000Z") }

// fmtDur writes a duration in at most 8 columns, with the precision that
// matters at its size.
func fmtDur(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", ms)
	case d < time.Second:
		return fmt.Sprintf("%.1fms", ms)
	case d < time.Minute:
		return fmt.Sprintf("%.2fs", ms/1000)
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	}
	return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
}
