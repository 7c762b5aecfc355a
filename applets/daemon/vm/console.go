package vm

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/layout"
	"banger/internal/printable"
	"banger/logging"
)

// A VM's console (console.log, QEMU's serial output, appended to) is
// what its guest writes, and a guest that writes without end would fill
// the state directory and break every other VM. The daemon keeps each
// console under its --console-max-size: when one's data passes three
// quarters of it, the oldest part goes, down to half, in place (QEMU
// writes it with O_APPEND, so its next write lands at the new end):
// FALLOC_FL_COLLAPSE_RANGE where the file system has it (ext4, XFS),
// else FALLOC_FL_PUNCH_HOLE (tmpfs), which frees the blocks and leaves a
// hole that vm logs skips. While no daemon runs, nothing is trimmed.

// DefaultConsoleMaxMiB is a console's default bound: many boots' worth.
const DefaultConsoleMaxMiB = 8

// consoleCheckEvery is how often consoles are looked at: a guest writes
// its serial port at about 1 MB/s under TCG, so one passes its trimming
// point by little before it is trimmed.
const consoleCheckEvery = 100 * time.Millisecond

// KeepConsoles bounds the consoles of the VMs and standbys under the
// state directory until ctx ends.
func (s *Service) KeepConsoles(ctx context.Context, max int64) {
	t := time.NewTicker(consoleCheckEvery)
	defer t.Stop()
	log := logging.From(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, dir := range []string{s.root, s.standbyRoot()} {
			files, _ := filepath.Glob(filepath.Join(dir, "*", layout.Console))
			for _, f := range files {
				if cut, err := trimConsole(f, max); err != nil {
					log.Warn().Err(err).Str("console", f).Msg("console not trimmed")
				} else if cut > 0 {
					log.Debug().Str("console", f).Int64("bytes", cut).Msg("console trimmed")
				}
			}
		}
	}
}

// trimConsole drops the oldest part of the console at path when its data
// passes three quarters of max, keeping about half of max, and says how
// many bytes went.
func trimConsole(path string, max int64) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, nil // gone meanwhile
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Blocks*512 <= max/4*3 {
		return 0, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	block := int64(st.Blksize)
	if block <= 0 {
		block = 4096
	}
	cut := (fi.Size() - max/2) / block * block
	if cut <= 0 {
		return 0, nil
	}
	err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_COLLAPSE_RANGE, 0, cut)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
		err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, cut)
	}
	if err != nil {
		return 0, err
	}
	return cut, nil
}

// LastLines is the last n non-empty lines of a file, joined with " | ",
// read from its last 4 KiB.
func LastLines(path string, n int) string {
	tail, err := readTail(path, 4096)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return lastLinesOf(tail, n)
}

// readTail is the last max bytes of a file.
func readTail(path string, max int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		f.Seek(fi.Size()-max, io.SeekStart)
	}
	b, err := io.ReadAll(io.LimitReader(f, max))
	return string(b), err
}

// consoleTail is the end of a VM's console (nothing when it has none).
func consoleTail(instanceDir string) string {
	tail, _ := readTail(filepath.Join(instanceDir, layout.Console), 8192)
	return tail
}

// lastLinesOf is the last n non-empty lines of text, joined with " | ",
// without control characters: the text is a guest's (its console).
func lastLinesOf(text string, n int) string {
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if l = printable.String(l, 0); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return "(nothing)"
	}
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}
