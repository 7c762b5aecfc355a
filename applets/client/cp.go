package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"time"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
	"banger/internal/session"
	"banger/internal/treetar"
	"banger/internal/untar"
	"banger/rpc"
)

// Bounds of what `vm cp` unpacks from a guest: it is untrusted, and an
// endless stream must end.
const (
	maxCopyOutBytes   = 64 << 30
	maxCopyOutEntries = 4 << 20
)

func newVMCpCommand() *cli.Command {
	return &cli.Command{
		Name:  "cp",
		Usage: "copy a file or directory between a running VM and the host, as docker cp",
		ArgsUsage: "SRC DST\n\n" +
			"   One side is NAME:PATH, a path in the VM (absolute, or ~/PATH in the user's home); the other a host\n" +
			"   path, or - for a tar stream on stdin (into the VM's directory PATH) or stdout. A directory that is\n" +
			"   there at DST gets SRC in it; otherwise SRC becomes DST. Modes, times and symlinks are kept; what\n" +
			"   comes out of a VM is unpacked as untrusted: nothing outside DST, no devices, no set-id bits.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "do not say what was copied"},
			userFlag(),
		},
		Action: action(func(c *cli.Context, s *target) error {
			a, err := args(c, 2, 2)
			if err != nil {
				return err
			}
			srcVM, srcPath, fromVM := vmPath(a[0])
			dstVM, dstPath, toVM := vmPath(a[1])
			switch {
			case fromVM == toVM:
				return usageError(errors.New("give one side as NAME:PATH, a path in a VM, and the other as a host path or -"))
			case toVM:
				return copyIn(c, s, a[0], api.VMCopy{Name: dstVM, Dir: dstPath, User: c.String("user")})
			}
			return copyOut(c, s, api.VMCopyOut{Name: srcVM, Path: srcPath, User: c.String("user")}, a[1])
		}),
	}
}

// vmSide is NAME:PATH: a VM's name (a DNS label) and a colon. A host
// path with a colon in its first element is given as ./PATH.
var vmSide = regexp.MustCompile(`^([a-z0-9][a-z0-9-]{0,62}):(.+)$`)

func vmPath(arg string) (name, p string, ok bool) {
	m := vmSide.FindStringSubmatch(arg)
	if m == nil {
		return "", "", false
	}
	return m[1], m[2], true
}

// copyIn sends a host file or directory (or, for -, the tar stream on
// stdin) into the VM.
func copyIn(c *cli.Context, s *target, src string, p api.VMCopy) error {
	what := "the tar stream on stdin"
	write := func(w io.Writer) (int, int64, error) {
		n, err := io.Copy(w, envOf(c).Stdin)
		return 0, n, err
	}
	if src != "-" {
		abs, err := filepath.Abs(src)
		if err != nil {
			return err
		}
		if _, err := os.Lstat(abs); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return rpc.Errorf(rpc.CodeNotFound, "%s does not exist", src)
			}
			return usageError(err)
		}
		what, p.Top = src, filepath.Base(abs)
		if abs == "/" {
			p.Top = "."
		}
		write = func(w io.Writer) (int, int64, error) {
			tw, err := treetar.WriteTree(w, abs)
			return tw.Files, tw.Bytes, err
		}
	}
	start := time.Now()
	st, err := sendTar(c, s, p, write)
	if err != nil {
		return fmt.Errorf("copy %s to %s:%s: %w", what, p.Name, p.Dir, err)
	}
	if !c.Bool("quiet") {
		fmt.Fprintf(c.App.ErrWriter, "copied %d files (%s) to %s:%s in %s\n", st.files, api.HumanBytes(st.bytes), p.Name, p.Dir, fmtMillis(float64(time.Since(start).Microseconds())/1000))
	}
	return nil
}

// sendTar streams what write writes into the VM (vm.copy), in full
// frames: tar writes headers and padding in 512-byte pieces, and each
// write would be a frame of its own all the way to the guest. Ctrl-C ends
// the copy.
func sendTar(c *cli.Context, s *target, p api.VMCopy, write func(io.Writer) (files int, bytes int64, err error)) (copyStats, error) {
	pr, pw := io.Pipe()
	stats := make(chan copyStats, 1)
	go func() {
		bw := bufio.NewWriterSize(pw, session.MaxPayload)
		files, n, err := write(bw)
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err)
		stats <- copyStats{files: files, bytes: n, err: err}
	}()
	conn, err := s.stream(c.Context, api.MethodVMCopy, p, nil)
	if err != nil {
		pr.CloseWithError(err)
		return copyStats{}, err
	}
	stop := context.AfterFunc(c.Context, func() { conn.Close() })
	defer stop()
	status, err := session.Run(conn, session.Stdio{Stdin: pr, Stderr: c.App.ErrWriter})
	pr.Close()
	st := <-stats
	switch {
	case c.Context.Err() != nil:
		return st, c.Context.Err()
	case err != nil && st.err != nil:
		return st, st.err
	case err != nil:
		return st, err
	case status.Code != 0:
		return st, errors.New(status.Error)
	}
	return st, nil
}

// copyOut unpacks the VM's tar of a path at dst on the host, as what a
// guest sends: beneath dst only, bounded; or, for -, writes the stream
// to stdout as it is.
func copyOut(c *cli.Context, s *target, p api.VMCopyOut, dst string) error {
	start := time.Now()
	conn, err := s.stream(c.Context, api.MethodVMCopyOut, p, nil)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(c.Context, func() { conn.Close() })
	defer stop()
	if dst == "-" {
		status, err := session.Run(conn, session.Stdio{Stdout: envOf(c).Stdout, Stderr: c.App.ErrWriter})
		return copyOutError(c, p, err, status)
	}
	top := path.Base(p.Path)
	if top == "/" {
		top = "."
	}
	abs, err := filepath.Abs(dst)
	if err != nil {
		return err
	}
	dir, opts := untar.Into(abs, top)
	opts.MaxBytes, opts.MaxEntries = maxCopyOutBytes, maxCopyOutEntries
	pr, pw := io.Pipe()
	unpacked := make(chan error, 1)
	var st untar.Stats
	go func() {
		var err error
		st, err = untar.Unpack(dir, pr, opts)
		if err == nil {
			_, err = io.Copy(io.Discard, pr) // the end-of-archive padding
		}
		pr.CloseWithError(err) // a refused stream stops the session
		unpacked <- err
	}()
	status, err := session.Run(conn, session.Stdio{Stdout: pw, Stderr: c.App.ErrWriter})
	pw.CloseWithError(err)
	if uerr := <-unpacked; uerr != nil && c.Context.Err() == nil {
		return fmt.Errorf("copy %s:%s to %s: what the guest sent was refused: %w", p.Name, p.Path, dst, uerr)
	}
	if err := copyOutError(c, p, err, status); err != nil {
		return err
	}
	if !c.Bool("quiet") {
		fmt.Fprintf(c.App.ErrWriter, "copied %d files (%s) from %s:%s to %s in %s\n", st.Files, api.HumanBytes(st.Bytes), p.Name, p.Path, dst, fmtMillis(float64(time.Since(start).Microseconds())/1000))
	}
	return nil
}

// copyOutError is how a copy out ended, as an error.
func copyOutError(c *cli.Context, p api.VMCopyOut, err error, status session.ExitStatus) error {
	switch {
	case c.Context.Err() != nil:
		return c.Context.Err()
	case err != nil:
		return fmt.Errorf("copy %s:%s: %w", p.Name, p.Path, err)
	case status.Code != 0:
		return fmt.Errorf("copy %s:%s: the guest's copy failed: %s", p.Name, p.Path, status.Error)
	}
	return nil
}
