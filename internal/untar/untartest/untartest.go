// Package untartest writes tar streams for tests of what unpacks them.
package untartest

import (
	"archive/tar"
	"bytes"
	"testing"
	"time"
)

// Entry is a tar entry to write; a zero Mode is 0o644, a zero ModTime
// Time.
type Entry struct {
	tar.Header
	Body string
}

// File is a regular file's entry.
func File(name, body string) Entry {
	return Entry{tar.Header{Typeflag: tar.TypeReg, Name: name}, body}
}

// Dir is a directory's entry.
func Dir(name string) Entry { return Entry{tar.Header{Typeflag: tar.TypeDir, Name: name}, ""} }

// Link is a symlink's (tar.TypeSymlink) or a hard link's entry.
func Link(typ byte, name, target string) Entry {
	return Entry{tar.Header{Typeflag: typ, Name: name, Linkname: target}, ""}
}

// Time is the entries' modification time unless they give one.
var Time = time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)

// Archive is the tar stream of the entries.
func Archive(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Header
		h.Size = int64(len(e.Body))
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.ModTime.IsZero() {
			h.ModTime = Time
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.Body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
