// Package client is the banger applet: the command line for people and for
// the scripts and agents they run. It never does privileged work and never
// touches state itself; everything goes through the daemon's socket.
//
// For scripts: exit codes are stable (exitcodes.go), --json prints results
// as JSON on stdout, errors go to stderr as one line ending with the op id
// (or one JSON object with --json), and nothing ever prompts.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
	"banger/internal/cliout"
	"banger/logging"
	"banger/rpc"
)

// Env is what the client gets from the binary: its build, the names of the
// applets it can link, and its standard streams.
type Env struct {
	Build   api.Build
	Applets []string
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
}

// Main runs the client with args (args[0] is the applet's name) and returns
// the exit code.
func Main(env Env, args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer stop()
	// A closed pipe on stdout must not kill the client outright, as Go
	// does by default: vm run --rm still has a VM to delete, and a raw
	// terminal to restore. Writes then fail with EPIPE instead. (Notify,
	// not Ignore: an ignored signal would stay ignored in what we start.)
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	// Every request of this command is in one trace: the caller's, when
	// it gives one (TRACEPARENT, the convention for a CLI), else its own.
	ctx = rpc.WithSpan(ctx, commandTrace(os.Getenv("TRACEPARENT")))
	app := newApp(env)
	app.Metadata[argsKey] = args
	err := app.RunContext(ctx, args)
	if err == nil {
		return ExitOK
	}
	var status exitStatus
	if errors.As(err, &status) {
		return int(status)
	}
	code, exit := classifyRun(err)
	printError(env.Stderr, wantJSON(args), code, err)
	return exit
}

// commandTrace is where a command stands in its trace: at its caller's
// span (a well-formed W3C traceparent), whose children the daemon's
// spans of its requests then are; else at a span of its own in a new
// trace, which all its requests share as their parent (the client
// exports no span: that one only ties them together).
func commandTrace(traceparent string) rpc.Trace {
	if t, ok := rpc.ParseTrace(traceparent); ok {
		return t
	}
	return rpc.Trace{ID: rpc.NewTraceID(), SpanID: rpc.NewSpanID()}
}

func newApp(env Env) *cli.App {
	return &cli.App{
		Name:                 api.AppletClient,
		Usage:                "disposable development sandboxes on microVMs",
		Version:              env.Build.String(),
		Writer:               env.Stdout,
		ErrWriter:            env.Stderr,
		HideHelpCommand:      true,
		EnableBashCompletion: false,
		// A repeated flag gives one value each time, commas and all: a
		// --run 'CMD' or --env K=a,b is one value.
		DisableSliceFlagSeparator: true,
		Flags:                     globalFlags(),
		Commands: []*cli.Command{
			newPingCommand(),
			newVersionCommand(env),
			newDaemonCommand(),
			newHostCommand(),
			newLinksCommand(env),
			newTraceCommand(),
			newOperationCommand(),
			newVMCommand(),
			newImageCommand(),
			newKernelCommand(),
			newNetworkCommand(),
			newSystemCommand(),
			newDoctorCommand(),
		},
		Metadata: map[string]any{envKey: env},
		// Before runs once the global flags are parsed (--state-dir) and
		// before the command: every command's trace is remembered first.
		Before: func(c *cli.Context) error {
			rememberTrace(c)
			return nil
		},
		// Errors are printed once, by Main, with their exit code.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return usageError(err)
		},
	}
}

const (
	envKey  = "env"
	argsKey = "args"
)

// exitStatus ends the client with a command's own exit status (vm exec,
// vm run), printing nothing: the command said what it had to.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func globalFlags() []cli.Flag {
	return []cli.Flag{
		jsonFlag(),
		&cli.StringFlag{Name: "socket", EnvVars: []string{"BANGER_SOCKET"}, Usage: "the daemon's socket `PATH` (default $XDG_RUNTIME_DIR/banger/bangerd.sock)"},
		&cli.StringFlag{Name: "state-dir", EnvVars: []string{"BANGER_STATE_DIR"}, Usage: "banger's state `DIR`, for a daemon started from here and for trace (default $XDG_STATE_HOME/banger)"},
		&cli.StringFlag{Name: "log-level", EnvVars: []string{logging.EnvLevel}, Usage: "log level of a daemon started from here: trace, debug, info, warn or error"},
		&cli.BoolFlag{Name: "no-autostart", EnvVars: []string{"BANGER_NO_AUTOSTART"}, Usage: "do not start the daemon when it is not running"},
	}
}

// jsonFlag is global and also on each command, so `banger --json ping`
// and `banger ping --json` both work.
func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", EnvVars: []string{"BANGER_JSON"}, Usage: "print results (and errors, on stderr) as JSON"}
}

// ranError marks an error returned by a command's action, as opposed to
// one from parsing the command line.
type ranError struct{ err error }

func (e *ranError) Error() string { return e.err.Error() }
func (e *ranError) Unwrap() error { return e.err }

// action adapts a command body to urfave/cli, marking its errors.
func action(fn func(c *cli.Context, s *target) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		s, err := newTarget(c)
		if err != nil {
			return usageError(err)
		}
		if err := fn(c, s); err != nil {
			return &ranError{err}
		}
		return nil
	}
}

// classifyRun gives the code and exit code of an error from the app:
// an action's own errors by what they are, anything else from parsing the
// command line is a usage error.
func classifyRun(err error) (string, int) {
	var re *ranError
	var ce *cliError
	if errors.As(err, &re) || errors.As(err, &ce) {
		return classify(err)
	}
	return codeUsage, ExitUsage
}

// printError writes err to stderr: one line ending with the op id when the
// server gave one, or with --json one object {"error": {...}}.
func printError(w io.Writer, asJSON bool, code string, err error) {
	if !asJSON {
		fmt.Fprintf(w, "banger: %s\n", err)
		return
	}
	e := rpc.ErrorResponse{Code: code, Message: err.Error()}
	var re *rpc.ErrorResponse
	if errors.As(err, &re) {
		e = *re
	}
	json.NewEncoder(w).Encode(map[string]any{"error": e})
}

// wantJSON finds --json anywhere on the command line (or BANGER_JSON), for
// errors raised before flags are parsed.
func wantJSON(args []string) bool {
	for _, a := range args[1:] {
		if a == "--" {
			break
		}
		if a == "--json" || a == "--json=true" {
			return true
		}
	}
	v := os.Getenv("BANGER_JSON")
	return v == "1" || v == "true"
}

func envOf(c *cli.Context) Env {
	return c.App.Metadata[envKey].(Env)
}

// jsonOutput reports whether --json was given to the command or before
// it (banger --json vm list): a command's own --json flag hides the
// global one from c.Bool.
func jsonOutput(c *cli.Context) bool {
	for _, ctx := range c.Lineage() {
		if ctx.Bool("json") {
			return true
		}
	}
	return false
}

// output prints v as JSON with --json (jsonOutput), else as human
// writes it.
func output(c *cli.Context, v any, human func(w io.Writer)) error {
	return cliout.Print(c.App.Writer, jsonOutput(c), v, human)
}

// args returns the command's positional arguments, between min and max
// of them (cliout.Args).
func args(c *cli.Context, min, max int) ([]string, error) {
	a, err := cliout.Args(c, c.Command.HelpName, min, max)
	if err != nil {
		return nil, usageError(err)
	}
	return a, nil
}

// noFlagsIn refuses a flag among positional arguments, with a hint.
func noFlagsIn(c *cli.Context, a []string) error {
	if err := cliout.NoFlagsIn(c, c.Command.HelpName, a); err != nil {
		return usageError(err)
	}
	return nil
}
