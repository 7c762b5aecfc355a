package logfile_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"banger/logging"
	"banger/logging/logfile"
)

// A log rotated by size keeps its records in its rotated files, which
// Files lists oldest first with the live file last, and not files that
// only start alike.
func TestRotatingLogKeepsItsRecordsInFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bangerd.log")
	os.WriteFile(filepath.Join(dir, "bangerd-root.log"), []byte("the helper's\n"), 0o600)
	w, err := logfile.Open(path, logfile.Rotation{MaxSizeMiB: 1, MaxFiles: 2})
	if err != nil {
		t.Fatal(err)
	}
	log := logging.New(w, "bangerd", zerolog.InfoLevel)
	pad := strings.Repeat("x", 1000)
	for i := range 3000 { // about 3 MiB: three rotations, one file too many
		log.Info().Int("n", i).Str("pad", pad).Msg("record")
	}
	w.Close()
	// lumberjack removes the files past MaxFiles in the background.
	var files []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if files = logfile.Files(path); len(files) == 3 || time.Now().After(deadline) {
			break
		}
	}
	if len(files) != 3 || files[2] != path {
		t.Fatalf("files: %v", files)
	}
	var n int
	for i, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 1<<20 {
			t.Errorf("%s has %d bytes, more than its limit", f, len(b))
		}
		if fi, _ := os.Stat(f); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v", f, fi.Mode())
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if i == 2 && !strings.Contains(lines[len(lines)-1], `"n":2999`) {
			t.Errorf("the live file does not end with the last record")
		}
		n += len(lines)
	}
	if n < 2000 || n >= 3000 {
		t.Errorf("%d records kept in 3 files of 1 MiB", n)
	}
}
