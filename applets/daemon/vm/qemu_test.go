package vm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLastLines(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "console.log")
	long := strings.Repeat("noise line\n", 1000) + "\nKernel panic - not syncing: VFS\n\n---[ end Kernel panic ]---\n"
	os.WriteFile(p, []byte(long), 0o600)
	got := lastLines(p, 2)
	if got != "Kernel panic - not syncing: VFS | ---[ end Kernel panic ]---" {
		t.Errorf("lastLines = %q", got)
	}
	os.WriteFile(p, nil, 0o600)
	if got := lastLines(p, 3); got != "(nothing)" {
		t.Errorf("empty file: %q", got)
	}
	if got := lastLines(filepath.Join(dir, "gone"), 3); !strings.Contains(got, "no such file") {
		t.Errorf("missing file: %q", got)
	}
}
