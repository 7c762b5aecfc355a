package client

import (
	"errors"
	"os/exec"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
)

// newSystemCommand is `banger system`: installing banger for the whole
// machine is the root side's work, so this runs `bangerd-root system`
// from this very binary (/proc/self/exe, as the client starts its daemon),
// its arguments, input and output as they are, and exits with its code.
// The client itself never does privileged work.
func newSystemCommand() *cli.Command {
	return &cli.Command{
		Name:            "system",
		Usage:           "install banger for the whole machine: binary, root helper and daemon services (as root; bangerd-root system)",
		SkipFlagParsing: true,
		Action: func(c *cli.Context) error {
			a := c.Args().Slice()
			if jsonOutput(c) && len(a) > 0 {
				// `banger --json system status`: the subcommand's own flag.
				a = append([]string{a[0], "--json"}, a[1:]...)
			}
			env := envOf(c)
			cmd := exec.CommandContext(c.Context, "/proc/self/exe")
			cmd.Args = append([]string{api.AppletHelper, "system"}, a...)
			cmd.Stdin, cmd.Stdout, cmd.Stderr = env.Stdin, env.Stdout, env.Stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				if code := ee.ExitCode(); code > 0 {
					return exitStatus(code)
				}
				return exitStatus(ExitFailed) // killed by a signal
			}
			return err
		},
	}
}
