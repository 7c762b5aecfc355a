// Package printable makes text that came from a guest fit for a terminal
// and for a log record. A guest is untrusted, and a control character
// that reaches a terminal (an escape sequence above all) can rewrite what
// the user sees, move the cursor, retitle the window, or on some
// terminals answer back as if typed. It only filters; it never
// interprets.
package printable

import (
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

// String is s without control characters (Unicode's Cc: C0, DEL, C1 and
// so ESC) and without invalid UTF-8, trimmed, at most max bytes (max <= 0:
// no limit), a cut marked with "…".
func String(s string, max int) string {
	s = strings.TrimSpace(strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return -1
		}
		return r
	}, s))
	if max > 0 && len(s) > max {
		s = strings.ToValidUTF8(s[:max], "") + "…"
	}
	return s
}

// Writer passes text through without control characters, but newlines
// and tabs: a guest's console, streamed. A rune split across two writes
// is kept whole; bytes that are not UTF-8 are dropped.
type Writer struct {
	w       io.Writer
	pending []byte // the start of a rune the last write cut
}

// NewWriter filters what it is given into w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write filters b into the underlying writer and reports all of b
// written, unless that writer fails.
func (p *Writer) Write(b []byte) (int, error) {
	in := append(p.pending, b...)
	p.pending = nil
	out := make([]byte, 0, len(in))
	for len(in) > 0 {
		r, size := utf8.DecodeRune(in)
		if r == utf8.RuneError && size <= 1 {
			if !utf8.FullRune(in) {
				p.pending = append([]byte{}, in...) // wait for the rest
				break
			}
			in = in[1:]
			continue
		}
		if r == '\n' || r == '\t' || !unicode.IsControl(r) {
			out = append(out, in[:size]...)
		}
		in = in[size:]
	}
	if _, err := p.w.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}
