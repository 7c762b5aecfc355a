package client

import (
	"errors"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"banger/internal/layout"
	"banger/rpc"
)

// rememberTrace writes the command's trace id where `banger trace --last`
// finds it, at the start of the command so a command still running can
// be traced from another terminal. It never fails nor holds up the
// command: a state directory it cannot write only leaves --last behind.
func rememberTrace(c *cli.Context) {
	if !remembers(c.Args().Slice()) {
		return
	}
	if id := rpc.TraceIDFrom(c.Context); rpc.ValidTraceID(id) {
		writeLastTrace(userStateDir(c), id)
	}
}

// remembers tells whether a command line is a command to remember: not
// trace itself (its --last would find itself), help or version, which
// trace nothing.
func remembers(args []string) bool {
	if len(args) == 0 {
		return false
	}
	switch args[0] {
	case "trace", "help", "h", "version":
		return false
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "--help" {
			return false
		}
	}
	return true
}

// userStateDir is the user's own state directory (--state-dir,
// BANGER_STATE_DIR, else $XDG_STATE_HOME/banger), not the system
// install's, which the user cannot write.
func userStateDir(c *cli.Context) string {
	if d := c.String("state-dir"); d != "" {
		return d
	}
	return layout.State()
}

// writeLastTrace replaces the last-trace file with id at once (a
// temporary file renamed over it), mode 0600: a concurrent --last reads
// the old id or the new one, never half of one.
func writeLastTrace(dir, id string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+layout.LastTrace+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // a no-op after the rename
	_, err = f.WriteString(id + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), filepath.Join(dir, layout.LastTrace))
}

// readLastTrace is the trace id the last command run from here wrote.
func readLastTrace(dir string) (string, error) {
	path := filepath.Join(dir, layout.LastTrace)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", rpc.Errorf(rpc.CodeNotFound, "no command has been run from here yet (no %s): run one, or give trace an op id", path)
	}
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(string(b))
	if !rpc.ValidTraceID(id) {
		return "", rpc.Errorf(rpc.CodeNotFound, "%s holds no trace id", path)
	}
	return id, nil
}
