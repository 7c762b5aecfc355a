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
		Usage:     "show every log record of one op id, from the daemon and the helper, as a timeline",
		ArgsUsage: "OP_ID (it ends every error banger prints)",
		Flags: []cli.Flag{
			jsonFlag(),
			&cli.BoolFlag{Name: "journal", Usage: "read the system install's records from journalctl (units bangerd and bangerd-root)"},
			&cli.StringSliceFlag{Name: "log", Usage: "also read the JSON log `FILE` (repeatable)"},
		},
		Action: action(func(c *cli.Context, s *target) error {
			a, err := args(c, 1, 1)
			if err != nil {
				return err
			}
			opID := a[0]
			if !rpc.ValidOpID(opID) {
				return usageError(fmt.Errorf("%q is not an op id (op- and 26 characters)", opID))
			}
			sources, names, err := traceSources(s, c.Bool("journal"), c.StringSlice("log"))
			if err != nil {
				return err
			}
			recs, err := trace.Collect(opID, sources)
			if err != nil {
				return err
			}
			if len(recs) == 0 {
				return rpc.Errorf(rpc.CodeNotFound, "no records of %s in %v", opID, names)
			}
			if jsonOutput(c) {
				return trace.WriteJSON(c.App.Writer, recs)
			}
			return trace.WriteTimeline(c.App.Writer, opID, recs)
		}),
	}
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
