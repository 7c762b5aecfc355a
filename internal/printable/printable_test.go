package printable

import (
	"bytes"
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Kernel panic - not syncing", "Kernel panic - not syncing"},
		{"\x1b[2J\x1b]0;pwned\x07clear", "[2J]0;pwnedclear"},
		{"tab\there\nline\r", "tabhereline"},
		{"c1 \u009b31m and del \x7f", "c1 31m and del"},
		{"bad \xff utf-8", "bad  utf-8"},
		{"  é ünïcode  ", "é ünïcode"},
	} {
		if got := String(tc.in, 0); got != tc.want {
			t.Errorf("String(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := String(strings.Repeat("é", 10), 5); got != "éé…" {
		t.Errorf("cut: %q", got)
	}
}

// A console streamed in pieces keeps its newlines, tabs and runes split
// across writes, and loses every control character.
func TestWriter(t *testing.T) {
	var b bytes.Buffer
	w := NewWriter(&b)
	in := "boot\r\n\x1b[31mred\x1b[0m\tdone é\n\x00\x9b"
	for i := range len(in) { // a byte at a time: every split
		if n, err := w.Write([]byte{in[i]}); n != 1 || err != nil {
			t.Fatalf("write: %d %v", n, err)
		}
	}
	if got, want := b.String(), "boot\n[31mred[0m\tdone é\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func FuzzWriter(f *testing.F) {
	f.Add([]byte("\x1b[2Jhello\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var b bytes.Buffer
		NewWriter(&b).Write(in)
		for _, r := range b.String() {
			if r != '\n' && r != '\t' && (r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0)) {
				t.Fatalf("control %U passed in %q", r, b.String())
			}
		}
	})
}
