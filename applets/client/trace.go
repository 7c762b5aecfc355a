package client

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"banger/internal/layout"
	"banger/internal/trace"
	"banger/logging/logfile"
	"banger/rpc"
)

func newTraceCommand() *cli.Command {
	return &cli.Command{
		Name:      "trace",
		Usage:     "show one command's log records (the daemon's, the helper's, the agent's) as a waterfall of its calls and stages",
		ArgsUsage: "OP_ID|TRACE_ID (an op id ends every error banger prints)",
		Flags: []cli.Flag{
			jsonFlag(),
			&cli.BoolFlag{Name: "last", Usage: "the last command run from here (its trace id is in " + layout.LastTrace + " in the state directory)"},
			&cli.BoolFlag{Name: "journal", Usage: "read the system install's records from journalctl (units bangerd and bangerd-root)"},
			&cli.StringSliceFlag{Name: "log", Usage: "also read the JSON log `FILE` (repeatable)"},
		},
		Action: action(func(c *cli.Context, s *target) error {
			id, err := traceID(c)
			if err != nil {
				return err
			}
			sources, names, err := traceSources(s, c.Bool("journal"), c.StringSlice("log"))
			if err != nil {
				return err
			}
			found, err := trace.Find(id, sources)
			if err != nil {
				return err
			}
			if len(found.Records) == 0 {
				return rpc.Errorf(rpc.CodeNotFound, "no records of %s in %v", id, names)
			}
			if jsonOutput(c) {
				return trace.WriteJSON(c.App.Writer, found.Records)
			}
			return trace.WriteWaterfall(c.App.Writer, trace.Build(found))
		}),
	}
}

// traceID is what to trace: the op id or trace id given, or with --last
// the trace of the last command run from here.
func traceID(c *cli.Context) (string, error) {
	a, err := args(c, 0, 1)
	if err != nil {
		return "", err
	}
	switch {
	case c.Bool("last") && len(a) > 0:
		return "", usageError(fmt.Errorf("give an op id or trace id, or --last, not both"))
	case c.Bool("last"):
		return readLastTrace(userStateDir(c))
	case len(a) == 0:
		return "", usageError(fmt.Errorf("%s needs an op id or a trace id, or --last", c.Command.HelpName))
	case !rpc.ValidOpID(a[0]) && !rpc.ValidTraceID(a[0]):
		return "", usageError(fmt.Errorf("%q is neither an op id (op- and 26 characters) nor a trace id (32 lowercase hex digits)", a[0]))
	}
	return a[0], nil
}

// traceSources opens the user-mode logs that exist (the daemon's rotated
// files too), the extra files, and the journal when asked.
func traceSources(s *target, journal bool, extra []string) ([]trace.Source, []string, error) {
	var sources []trace.Source
	var names []string
	logs := logfile.Files(filepath.Join(s.stateDir, layout.DaemonLog))
	for _, path := range append(logs, filepath.Join(s.stateDir, layout.HelperLog)) {
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		sources = append(sources, trace.Source{Name: path, R: bytes.NewReader(b)})
		names = append(names, path)
	}
	for _, path := range extra {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, nil, err
		}
		sources = append(sources, trace.Source{Name: path, R: bytes.NewReader(b)})
		names = append(names, path)
	}
	if journal {
		out, err := exec.Command("journalctl", "-o", "cat", "--no-pager", "-u", "bangerd.service", "-u", "bangerd-root.service").Output()
		if err != nil {
			return nil, nil, fmt.Errorf("read the journal: %w", err)
		}
		sources = append(sources, trace.Source{Name: "journal", R: bytes.NewReader(out)})
		names = append(names, "journal")
	}
	return sources, names, nil
}
