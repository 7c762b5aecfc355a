// Package doctortest is what the tests of doctor rows share: running one
// check of a table, the rule every row keeps, and a daemon that answers
// as a test tells it.
package doctortest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"banger/internal/api"
	"banger/internal/doctor"
	"banger/internal/layout"
	"banger/rpc"
)

// Row runs the check called name of checks on h.
func Row[H any](t testing.TB, h H, checks []doctor.Check[H], name string) api.DoctorRow {
	t.Helper()
	for _, c := range checks {
		if c.Name == name {
			return doctor.Run(context.Background(), h, []doctor.Check[H]{c})[0]
		}
	}
	t.Fatalf("no check %q", name)
	return api.DoctorRow{}
}

// Want checks that r has status and a detail containing detail, and that
// a row that warns or fails says why (a code) and what to do (a fix; a
// row that could not read what it checks may have none).
func Want(t testing.TB, r api.DoctorRow, status, detail string) {
	t.Helper()
	if r.Status != status || !strings.Contains(r.Detail, detail) {
		t.Errorf("%s: %s %q (fix %q); want %s with %q", r.Name, r.Status, r.Detail, r.Fix, status, detail)
	}
	if r.Status == api.DoctorWarn || r.Status == api.DoctorFail {
		if r.Code == "" || (r.Fix == "" && !strings.Contains(r.Detail, "read")) {
			t.Errorf("%s: %s without a code or a fix: %q (code %q)", r.Name, r.Status, r.Detail, r.Code)
		}
	}
}

// UniqueNames checks that every check of a table has a name, once, and a
// function.
func UniqueNames[H any](t testing.TB, checks []doctor.Check[H]) {
	t.Helper()
	seen := map[string]bool{}
	for _, c := range checks {
		if c.Name == "" || c.Run == nil || seen[c.Name] {
			t.Errorf("check %q: empty, without a function, or twice", c.Name)
		}
		seen[c.Name] = true
	}
}

// WriteFile writes a file of a fake host, its directories made, with
// exactly mode (whatever the umask).
func WriteFile(t testing.TB, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// Daemon serves methods on sock, and holds its stream socket, as a
// daemon of this test's user would, until the test ends.
func Daemon(t testing.TB, sock string, methods rpc.Methods) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	srv := &rpc.Server{Methods: methods, Authorize: rpc.AllowUIDs(uint32(os.Getuid())), Logger: zerolog.Nop()}
	ln, err := rpc.Listen(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := rpc.Listen(layout.StreamSocket(sock), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		stream.Close()
	})
}
