package vm

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A console past three quarters of its bound loses its oldest part, down
// to about half, in place: what is kept is the end, and a writer that
// appends goes on at the new end.
func TestTrimConsole(t *testing.T) {
	dirs := []string{t.TempDir()}
	if os.Getuid() == 0 {
		// tmpfs has no collapse: the head becomes a hole.
		tmp := t.TempDir()
		if err := syscall.Mount("tmpfs", tmp, "tmpfs", 0, "size=16m"); err == nil {
			t.Cleanup(func() { syscall.Unmount(tmp, syscall.MNT_DETACH) })
			dirs = append(dirs, tmp)
		}
	}
	for _, dir := range dirs {
		path := filepath.Join(dir, "console.log")
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		line := bytes.Repeat([]byte("x"), 1023)
		for range 2048 { // 2 MiB
			f.Write(append(line, '\n'))
		}
		f.Write([]byte("the end\n"))
		if cut, err := trimConsole(path, 4<<20); cut != 0 || err != nil {
			t.Errorf("%s: a console under its bound trimmed: %d %v", dir, cut, err)
		}
		cut, err := trimConsole(path, 1<<20)
		if err != nil || cut < 1<<20 {
			t.Fatalf("%s: trimmed %d bytes: %v", dir, cut, err)
		}
		f.Write([]byte("after\n"))
		f.Close()
		var st syscall.Stat_t
		syscall.Stat(path, &st)
		if used := st.Blocks * 512; used > 1<<20 {
			t.Errorf("%s: %d bytes kept", dir, used)
		}
		b, _ := os.ReadFile(path)
		if !bytes.HasSuffix(b, []byte("the end\nafter\n")) {
			t.Errorf("%s: the console's end is lost: %q", dir, b[max(0, len(b)-40):])
		}
	}
}

func TestLastLines(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "console.log")
	long := strings.Repeat("noise line\n", 1000) + "\nKernel panic - not syncing: VFS\n\n---[ end Kernel panic ]---\n"
	os.WriteFile(p, []byte(long), 0o600)
	got := LastLines(p, 2)
	if got != "Kernel panic - not syncing: VFS | ---[ end Kernel panic ]---" {
		t.Errorf("LastLines = %q", got)
	}
	os.WriteFile(p, nil, 0o600)
	if got := LastLines(p, 3); got != "(nothing)" {
		t.Errorf("empty file: %q", got)
	}
	if got := LastLines(filepath.Join(dir, "gone"), 3); !strings.Contains(got, "no such file") {
		t.Errorf("missing file: %q", got)
	}
}
