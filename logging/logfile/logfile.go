// Package logfile keeps a long-running daemon's log file bounded: it is
// rotated by size (lumberjack, the usual Go package for it), keeping a
// bounded number of earlier files beside it, named as lumberjack names
// them: NAME-TIME.EXT, TIME in UTC. It is apart from package logging so
// that the guest agent, which logs to its console, does not carry it.
package logfile

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gopkg.in/natefinch/lumberjack.v2"
)

// backupTime is lumberjack's time format in a rotated file's name.
const backupTime = "2006-01-02T15-04-05.000"

// Rotation is how a log file is rotated.
type Rotation struct {
	MaxSizeMiB int // the file is rotated before it grows past this
	MaxFiles   int // rotated files kept beside it; the oldest go first
}

// Defaults of the daemon's log.
const (
	DefaultMaxSizeMiB = 10
	DefaultMaxFiles   = 5
)

// Open opens path for appending records, rotated as r says; its
// directory is made 0700 if needed, and new files are 0600. Nothing is
// written to disk until the first record.
func Open(path string, r Rotation) (io.WriteCloser, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	return &lumberjack.Logger{Filename: path, MaxSize: r.MaxSizeMiB, MaxBackups: r.MaxFiles}, nil
}

// Files are the log at path and its rotated files that exist, oldest
// first: all a reader needs to see every record still kept.
func Files(path string) []string {
	dir, base := filepath.Split(path)
	ext := filepath.Ext(base)
	prefix := strings.TrimSuffix(base, ext) + "-"
	entries, _ := os.ReadDir(dir)
	type backup struct {
		path string
		at   time.Time
	}
	var backups []backup
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, ext) {
			continue
		}
		at, err := time.Parse(backupTime, strings.TrimSuffix(strings.TrimPrefix(name, prefix), ext))
		if err != nil {
			continue // another file that starts alike (bangerd-root.log)
		}
		backups = append(backups, backup{filepath.Join(dir, name), at})
	}
	slices.SortFunc(backups, func(a, b backup) int { return a.at.Compare(b.at) })
	var out []string
	for _, b := range backups {
		out = append(out, b.path)
	}
	if _, err := os.Stat(path); err == nil {
		out = append(out, path)
	}
	return out
}
