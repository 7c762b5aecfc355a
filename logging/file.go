package logging

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// OpenFile opens (creating, 0600) a log file for appending, creating its
// directory 0700 if needed.
func OpenFile(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create log directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", path, err)
	}
	return f, nil
}

// Tee writes every record to each of ws; a failing writer (a full disk, a
// closed stderr) does not stop the others.
func Tee(ws ...io.Writer) io.Writer {
	return tee(ws)
}

type tee []io.Writer

func (t tee) Write(p []byte) (int, error) {
	for _, w := range t {
		w.Write(p)
	}
	return len(p), nil
}
