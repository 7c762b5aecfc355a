package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"banger/internal/api"
	"banger/internal/session"
)

// Commands that run something in a VM: vm exec and vm shell. Their exit
// status is the command's own; a command killed by a signal gives 128+N,
// as in a shell.

func newVMExecCommand() *cli.Command {
	return &cli.Command{
		Name:      "exec",
		Usage:     "run a command in a running VM; exits with the command's status",
		ArgsUsage: "NAME -- COMMAND [ARG...]",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "tty", Aliases: []string{"t"}, Usage: "run the command on a terminal (needs one here)"},
			&cli.StringFlag{Name: "workdir", Aliases: []string{"w"}, Usage: "the command's working `DIR` in the VM (default: the image's, else the user's home)"},
			&cli.StringSliceFlag{Name: "env", Aliases: []string{"e"}, Usage: "set `K=V` in the command's environment (repeatable)"},
			userFlag(),
			&cli.BoolFlag{Name: "no-stdin", Aliases: []string{"n"}, Usage: "give the command an empty input instead of this one (as ssh -n; for loops that read their own input)"},
		},
		Action: action(func(c *cli.Context, s *target) error {
			pos, cmd, err := splitCommand(c, 1, 1)
			if err != nil {
				return err
			}
			if len(cmd) == 0 {
				return usageError(fmt.Errorf("no command: usage: %s [flags] %s", c.Command.HelpName, c.Command.ArgsUsage))
			}
			p := api.VMExec{Name: pos[0], Exec: session.Exec{Argv: cmd, Dir: c.String("workdir"), TTY: c.Bool("tty"), User: c.String("user")}}
			if p.Env, err = envFlags(c); err != nil {
				return err
			}
			if c.Bool("no-stdin") {
				if p.TTY {
					return usageError(errors.New("--no-stdin and --tty contradict each other"))
				}
				return runExecWith(c, s, p, nil)
			}
			return runExec(c, s, p)
		}),
	}
}

func newVMShellCommand() *cli.Command {
	return &cli.Command{
		Name:      "shell",
		Usage:     "open a login shell in a running VM (on a terminal when there is one here)",
		ArgsUsage: "NAME",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "workdir", Aliases: []string{"w"}, Usage: "the shell's working `DIR` in the VM (default: the image's, else the user's home)"},
			&cli.StringSliceFlag{Name: "env", Aliases: []string{"e"}, Usage: "set `K=V` in the shell's environment (repeatable)"},
			userFlag(),
		},
		Action: action(func(c *cli.Context, s *target) error {
			a, err := args(c, 1, 1)
			if err != nil {
				return err
			}
			p := api.VMExec{Name: a[0], Exec: shellExec(c, c.String("workdir"))}
			if p.Env, err = envFlags(c); err != nil {
				return err
			}
			return runExec(c, s, p)
		}),
	}
}

// shellExec is a login shell in dir, on a PTY when this side has a
// terminal; without one (a script piping commands) it reads its input.
func shellExec(c *cli.Context, dir string) session.Exec {
	return session.Exec{Shell: true, Dir: dir, TTY: isTerminal(envOf(c).Stdin) && isTerminal(envOf(c).Stdout), User: c.String("user")}
}

// userFlag is --user of the commands that run something in a VM.
func userFlag() cli.Flag {
	return &cli.StringFlag{Name: "user", Aliases: []string{"u"}, Usage: "run as `USER[:GROUP]`, names in the guest or numbers (default: the image's user, else root)"}
}

// envFlags checks the --env values.
func envFlags(c *cli.Context) ([]string, error) {
	env := c.StringSlice("env")
	for _, kv := range env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, usageError(fmt.Errorf("--env %q: want K=V", kv))
		}
	}
	return env, nil
}

// splitCommand splits the arguments at "--" into positional ones (min to
// max of them) and the command after it. urfave/cli drops a "--" that
// comes before any argument, so then everything is the command, a "--"
// inside the command included (vm run -- cargo test -- --nocapture).
func splitCommand(c *cli.Context, min, max int) (pos, cmd []string, err error) {
	a := c.Args().Slice()
	raw, _ := c.App.Metadata[argsKey].([]string)
	switch i := slices.Index(a, "--"); {
	case countDashDash(raw) > countDashDash(a):
		cmd = a
	case i >= 0:
		pos, cmd = a[:i], a[i+1:]
	default:
		pos = a
	}
	if err := noFlagsIn(c, pos); err != nil {
		return nil, nil, err
	}
	if len(pos) < min || len(pos) > max {
		return nil, nil, usageError(fmt.Errorf("usage: %s [flags] %s", c.Command.HelpName, c.Command.ArgsUsage))
	}
	return pos, cmd, nil
}

func countDashDash(args []string) int {
	n := 0
	for _, a := range args {
		if a == "--" {
			n++
		}
	}
	return n
}

// runExec runs p in the VM with this process's standard streams and ends
// the client with the command's status.
func runExec(c *cli.Context, s *target, p api.VMExec) error {
	return runExecWith(c, s, p, envOf(c).Stdin)
}

// runExecWith is runExec with the command's input from stdin (nil: none).
func runExecWith(c *cli.Context, s *target, p api.VMExec, stdin io.Reader) error {
	env := envOf(c)
	if p.TTY {
		if !isTerminal(env.Stdin) {
			return usageError(errors.New("--tty needs a terminal on standard input"))
		}
		if w, h, err := term.GetSize(fdOf(env.Stdin)); err == nil {
			p.Window = &session.WindowSize{Rows: uint16(h), Cols: uint16(w)}
		}
		if t := os.Getenv("TERM"); t != "" {
			p.Env = append([]string{"TERM=" + t}, p.Env...)
		}
	}
	st, err := runSession(c, s, api.MethodVMExec, p, stdin, env.Stdout, p.TTY)
	if err != nil {
		return err
	}
	if st.Error != "" {
		fmt.Fprintf(env.Stderr, "banger: %s\n", st.Error)
	}
	if st.Code != 0 {
		return exitStatus(st.Code)
	}
	return nil
}

// runSession opens a session and drives it with stdin and stdout (and the
// client's stderr), the terminal in raw mode when tty is set, restored on
// every way out.
func runSession(c *cli.Context, s *target, method string, params any, stdin io.Reader, stdout io.Writer, tty bool) (session.ExitStatus, error) {
	env := envOf(c)
	var started api.VMExecResult
	conn, err := s.stream(c.Context, method, params, &started)
	if err != nil {
		return session.ExitStatus{}, err
	}
	stdio := session.Stdio{Stdin: stdin, Stdout: stdout, Stderr: env.Stderr}
	var t *terminal
	if tty {
		if t, err = makeRaw(stdin); err != nil {
			conn.Close()
			return session.ExitStatus{}, err
		}
		defer t.restore()
		stdio.Resize = t.resizes()
	}
	// Signals go beside the session, so that input the command does not
	// read cannot hold them up.
	vm, _ := params.(api.VMExec)
	sig := forwardSignals(conn, tty, func(n int) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Context), 10*time.Second)
		defer cancel()
		s.daemon().SignalExec(ctx, api.VMExecSignal{Name: vm.Name, OpID: started.OpID, Signal: n})
	})
	defer sig.stop()
	st, err := session.Run(conn, stdio)
	if n := sig.interrupted(); err != nil && n != 0 {
		return session.ExitStatus{}, exitStatus(128 + n)
	}
	if errors.Is(err, syscall.EPIPE) {
		// Whoever read our output stopped (| head): end like the command
		// would have, killed by SIGPIPE.
		return session.ExitStatus{}, exitStatus(128 + int(syscall.SIGPIPE))
	}
	return st, err
}
