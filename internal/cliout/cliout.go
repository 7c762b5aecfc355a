// Package cliout is how banger's command lines print and take their
// arguments, the same in the client and in the helper's `system`
// commands: results as JSON with --json, else as people read them, and
// positional arguments checked.
package cliout

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"
)

// Print writes v to w as indented JSON when asJSON, else as human writes
// it.
func Print(w io.Writer, asJSON bool, v any, human func(w io.Writer)) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	human(w)
	return nil
}

// Args returns the command's positional arguments, between min and max
// of them. urfave/cli stops parsing flags at the first argument, so a flag
// after one would be silently taken as an argument: refuse it with a
// hint. name is the command as its user types it. The errors are usage
// errors.
func Args(c *cli.Context, name string, min, max int) ([]string, error) {
	a := c.Args().Slice()
	if err := NoFlagsIn(c, name, a); err != nil {
		return nil, err
	}
	if len(a) < min || len(a) > max {
		return nil, fmt.Errorf("usage: %s [flags] %s", name, c.Command.ArgsUsage)
	}
	return a, nil
}

// NoFlagsIn refuses a flag among positional arguments a, with a hint.
func NoFlagsIn(c *cli.Context, name string, a []string) error {
	for _, arg := range a {
		if strings.HasPrefix(arg, "-") && len(arg) > 1 {
			return fmt.Errorf("flag %s after an argument: put flags first (%s [flags] %s)", arg, name, c.Command.ArgsUsage)
		}
	}
	return nil
}
