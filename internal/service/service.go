// Package service holds what the two long-running applets, bangerd and
// bangerd-root, share in running their command line: one way to run the
// urfave/cli app and turn its error into an exit code.
package service

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

// Exit codes of the service applets, the same numbers as the client's.
const (
	ExitFailed      = 1
	ExitUsage       = 2
	ExitNotFound    = 4
	ExitConflict    = 5
	ExitDenied      = 6
	ExitUnavailable = 7
)

// Run runs app with args, prints an error on stderr prefixed with the
// applet's name (a cli.Exit without a message prints nothing), and
// returns the exit code: a cli.Exit code as given, anything else from
// parsing the command line as a usage error.
func Run(app *cli.App, args []string) int {
	app.HideHelpCommand = true
	app.ExitErrHandler = func(*cli.Context, error) {}
	err := app.Run(args)
	if err == nil {
		return 0
	}
	if err.Error() != "" {
		// An exit with no message has said what it had to say.
		fmt.Fprintf(os.Stderr, "%s: %v\n", app.Name, err)
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return ExitUsage
}
