package helper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
	"banger/internal/cliout"
	"banger/internal/layout"
	"banger/internal/privapi"
	"banger/internal/service"
	"banger/packaging"
	"banger/rpc"
)

// `bangerd-root system`: installing banger for the whole machine is root's
// work, so it is the root side's command (`banger system` runs it, from
// this very binary). It prints and exits as the client does: results on
// stdout (--json: as JSON), an error on stderr (--json: {"error": ...}),
// and the client's exit codes.

// Metadata keys of the helper's app: what `system` needs of the binary.
const (
	appletsKey = "applets"
	buildKey   = "build"
)

// systemError is a failure of a system command, with its code and exit
// code.
type systemError struct {
	code string
	exit int
	err  error
}

func (e *systemError) Error() string { return e.err.Error() }
func (e *systemError) Unwrap() error { return e.err }

func systemUsage(err error) error {
	return &systemError{code: "usage", exit: service.ExitUsage, err: err}
}

// systemAction runs a system command and reports its failure itself, as
// the client would, leaving an exit code that prints nothing more.
func systemAction(fn func(c *cli.Context) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		err := fn(c)
		var ec cli.ExitCoder
		if err == nil || (errors.As(err, &ec) && err.Error() == "") {
			return err
		}
		code, exit := "operation_failed", service.ExitFailed
		var se *systemError
		var re *rpc.ErrorResponse
		switch {
		case errors.As(err, &se):
			code, exit = se.code, se.exit
		case errors.As(err, &re):
			code = re.Code
			switch re.Code {
			case rpc.CodeUnauthorized:
				exit = service.ExitDenied
			case rpc.CodeUnavailable:
				exit = service.ExitUnavailable
			}
		}
		if c.Bool("json") {
			json.NewEncoder(c.App.ErrWriter).Encode(map[string]any{"error": rpc.ErrorResponse{Code: code, Message: err.Error()}})
		} else {
			fmt.Fprintf(c.App.ErrWriter, "banger: %s\n", err)
		}
		return cli.Exit("", exit)
	}
}

// userCommand is the command as users type it: `banger system NAME`
// runs this one.
func userCommand(c *cli.Context) string { return api.AppletClient + " system " + c.Command.Name }

func systemJSONFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", EnvVars: []string{"BANGER_JSON"}, Usage: "print results (and errors, on stderr) as JSON"}
}

func output(c *cli.Context, v any, human func(w io.Writer)) error {
	return cliout.Print(c.App.Writer, c.Bool("json"), v, human)
}

func args(c *cli.Context, min, max int) ([]string, error) {
	a, err := cliout.Args(c, userCommand(c), min, max)
	if err != nil {
		return nil, systemUsage(err)
	}
	return a, nil
}

// SystemWaitTimeout bounds the wait for started units to answer.
const SystemWaitTimeout = 30 * time.Second

// systemReport is `banger system install --json`.
type systemReport struct {
	*packaging.InstallReport
	Helper *privapi.PingResult  `json:"helper,omitempty"` // priv.ping on the helper's socket
	Daemon *api.PingResult      `json:"daemon,omitempty"`
	Host   *api.HostCheckResult `json:"host_check,omitempty"` // the daemon reaching the helper
}

// systemStatus is `banger system status --json`.
type systemStatus struct {
	*packaging.Status
	Daemon      *api.PingResult     `json:"daemon,omitempty"`
	DaemonError string              `json:"daemon_error,omitempty"`
	Helper      *privapi.PingResult `json:"helper,omitempty"`
	HelperError string              `json:"helper_error,omitempty"`
}

func newSystemCommand() *cli.Command {
	// --root stages or tests an install in a directory, like DESTDIR.
	rootFlag := &cli.StringFlag{Name: "root", Value: "/", Hidden: true, Usage: "install under `DIR` instead of /"}
	prefixFlag := &cli.StringFlag{Name: "prefix", Value: packaging.DefaultPrefix, Usage: "the binary goes to `PREFIX`/bin"}
	return &cli.Command{
		Name:  "system",
		Usage: "install banger for the whole machine: binary, root helper and daemon services (as root)",
		Subcommands: []*cli.Command{
			{
				Name:  "install",
				Usage: "copy this binary to PREFIX/bin with its links, write /etc/banger/install.toml, the units and (sudo mode) the sudoers rule, start the units",
				Flags: []cli.Flag{
					systemJSONFlag(), rootFlag, prefixFlag,
					&cli.StringFlag{Name: "owner", Required: true, Usage: "the `USER` whose daemon may use the root helper"},
					&cli.StringFlag{Name: "helper", Value: packaging.HelperService, Usage: "how the daemon reaches the root helper: service (bangerd-root.service) or sudo (a sudoers rule)"},
					&cli.DurationFlag{Name: "timeout", Value: SystemWaitTimeout, Usage: "how long to wait for started units to answer"},
				},
				Action: systemAction(systemInstall),
			},
			{
				Name:   "status",
				Usage:  "what is installed, and whether the services answer (exit 4 when banger is not installed)",
				Flags:  []cli.Flag{systemJSONFlag(), rootFlag, prefixFlag},
				Action: systemAction(systemStatusAction),
			},
			{
				// The .deb recipe renders the units and the sudoers example
				// with this (packaging/deb.sh).
				Name:      "render",
				Hidden:    true,
				Usage:     "write the units (and in sudo mode the sudoers rule) for OWNER and PREFIX into DIR",
				ArgsUsage: "DIR",
				Flags: []cli.Flag{prefixFlag,
					&cli.StringFlag{Name: "owner", Required: true, Usage: "the owner's `USER` name, or %i for a template unit"},
					&cli.StringFlag{Name: "helper", Value: packaging.HelperService, Usage: "service or sudo"},
				},
				Action: systemAction(systemRender),
			},
			{
				Name:  "uninstall",
				Usage: "stop the units and remove what install made (--purge: also /etc/banger and /var/lib/banger)",
				Flags: []cli.Flag{
					systemJSONFlag(), rootFlag, prefixFlag,
					&cli.BoolFlag{Name: "purge", Usage: "also remove the configuration and the daemon's state (VMs, images)"},
				},
				Action: systemAction(systemUninstall),
			},
		},
	}
}

func systemOf(c *cli.Context) packaging.System {
	return packaging.System{Root: c.String("root"), Applets: c.App.Metadata[appletsKey].([]string)}
}

// needRoot refuses a command that writes the system's files.
func needRoot(c *cli.Context) error {
	if os.Geteuid() == 0 {
		return nil
	}
	return &systemError{code: rpc.CodeUnauthorized, exit: service.ExitDenied,
		err: fmt.Errorf("%s writes system files and must run as root (sudo %s ...)", userCommand(c), userCommand(c))}
}

func systemInstall(c *cli.Context) error {
	if _, err := args(c, 0, 0); err != nil {
		return err
	}
	if err := needRoot(c); err != nil {
		return err
	}
	cfg, err := ownerConfig(c.String("owner"))
	if err != nil {
		return systemUsage(err)
	}
	cfg.Prefix, cfg.Helper = c.String("prefix"), c.String("helper")
	if err := cfg.Validate(); err != nil {
		return systemUsage(err)
	}
	sys := systemOf(c)
	ir, err := sys.Install(c.Context, cfg, "/proc/self/exe")
	var pe *packaging.PrefixError
	if errors.As(err, &pe) {
		return &systemError{code: rpc.CodeUnauthorized, exit: service.ExitDenied, err: err}
	}
	if err != nil {
		return err
	}
	rep := systemReport{InstallReport: ir}
	var waitErr error
	if ir.Started {
		waitErr = waitForSystem(c.Context, cfg, c.Duration("timeout"), &rep)
	}
	if err := output(c, rep, func(w io.Writer) {
		fmt.Fprintf(w, "installed banger %s for %s (uid %d), helper: %s\n", c.App.Metadata[buildKey], cfg.Owner, cfg.UID, cfg.Helper)
		for _, f := range ir.Files {
			fmt.Fprintf(w, "  wrote   %s\n", f)
		}
		for _, f := range ir.Removed {
			fmt.Fprintf(w, "  removed %s\n", f)
		}
		if ir.Packaged {
			fmt.Fprintf(w, "  %s is the banger package's; left as it is\n", ir.Binary)
		}
		if ir.Note != "" {
			fmt.Fprintf(w, "%s\n", ir.Note)
		}
		if rep.Helper != nil {
			fmt.Fprintf(w, "bangerd-root answers on %s (%s)\n", layout.SystemHelperSocket, rep.Helper.Version)
		}
		if rep.Daemon != nil {
			fmt.Fprintf(w, "bangerd answers on %s (pid %d)\n", layout.SystemDaemonSocket, rep.Daemon.PID)
		}
		if rep.Host != nil {
			fmt.Fprintf(w, "bangerd reaches the helper (%s)\n", rep.Host.HelperMode)
		}
		if ir.Started && waitErr == nil {
			fmt.Fprintf(w, "as %s: export BANGER_SOCKET=%s\n", cfg.Owner, layout.SystemDaemonSocket)
		}
	}); err != nil {
		return err
	}
	return waitErr
}

// ownerConfig looks the owner up: the user must exist and must not be
// root.
func ownerConfig(name string) (packaging.Config, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return packaging.Config{}, fmt.Errorf("--owner %s: %w", name, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return packaging.Config{}, fmt.Errorf("--owner %s: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return packaging.Config{}, fmt.Errorf("--owner %s: gid %q: %w", name, u.Gid, err)
	}
	return packaging.Config{Owner: u.Username, UID: uid, GID: gid}, nil
}

// waitForSystem waits until the started units answer: the helper on its
// socket (service mode), the daemon, and the daemon's own call to the
// helper (host.check), which tests the sudo rule in sudo mode.
func waitForSystem(ctx context.Context, cfg packaging.Config, timeout time.Duration, rep *systemReport) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if cfg.Helper == packaging.HelperService {
		rep.Helper = &privapi.PingResult{}
		if err := callUntil(ctx, layout.SystemHelperSocket, privapi.MethodPing, rep.Helper); err != nil {
			rep.Helper = nil
			return unavailable("bangerd-root did not answer on %s (journalctl -u %s): %w", layout.SystemHelperSocket, layout.HelperUnit, err)
		}
	}
	rep.Daemon = &api.PingResult{}
	if err := callUntil(ctx, layout.SystemDaemonSocket, api.MethodPing, rep.Daemon); err != nil {
		rep.Daemon = nil
		return unavailable("bangerd did not answer on %s (journalctl -u %s): %w", layout.SystemDaemonSocket, layout.DaemonUnit, err)
	}
	rep.Host = &api.HostCheckResult{}
	if err := (&rpc.Client{Socket: layout.SystemDaemonSocket}).Call(ctx, api.MethodHostCheck, nil, rep.Host); err != nil {
		rep.Host = nil
		return fmt.Errorf("bangerd runs but cannot reach the root helper: %w", err)
	}
	return nil
}

func unavailable(format string, a ...any) error {
	return &systemError{code: rpc.CodeUnavailable, exit: service.ExitUnavailable, err: fmt.Errorf(format, a...)}
}

// callUntil calls method on socket until it answers or ctx ends; a unit
// just started may not have made its socket yet.
func callUntil(ctx context.Context, socket, method string, result any) error {
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		err := (&rpc.Client{Socket: socket}).Call(ctx, method, nil, result)
		if !errors.Is(err, rpc.ErrUnreachable) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}

func systemStatusAction(c *cli.Context) error {
	if _, err := args(c, 0, 0); err != nil {
		return err
	}
	sys := systemOf(c)
	st := systemStatus{Status: sys.Status(c.Context, c.String("prefix"))}
	ctx, cancel := context.WithTimeout(c.Context, 2*time.Second)
	defer cancel()
	if d, err := (api.Client{Caller: &rpc.Client{Socket: sys.Path(layout.SystemDaemonSocket)}}).Ping(ctx); err != nil {
		st.DaemonError = err.Error()
	} else {
		st.Daemon = &d
	}
	if st.Config == nil || st.Config.Helper == packaging.HelperService {
		if h, err := (privapi.Client{Caller: &rpc.Client{Socket: sys.Path(layout.SystemHelperSocket)}}).Ping(ctx); err != nil {
			st.HelperError = err.Error()
		} else {
			st.Helper = &h
		}
	}
	if err := output(c, st, func(w io.Writer) {
		switch {
		case st.Installed:
			fmt.Fprintf(w, "installed for %s (uid %d), prefix %s, helper: %s\n", st.Config.Owner, st.Config.UID, st.Config.Prefix, st.Config.Helper)
		case st.Config != nil:
			fmt.Fprintf(w, "not installed (%s is there, %s is not; uninstall --purge removes the rest)\n", layout.SystemConfig, st.Config.Binary())
		default:
			fmt.Fprintf(w, "not installed (no %s)%s\n", layout.SystemConfig, prefixed(": ", st.Error))
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PATH\tSTATE")
		for _, f := range st.Files {
			state := "missing"
			if f.Exists {
				state = "present, mode " + f.Mode
			}
			fmt.Fprintf(tw, "%s\t%s%s\n", f.Path, state, prefixed(", ", f.Active))
		}
		for _, l := range st.Links {
			fmt.Fprintf(tw, "%s\tlink %s%s\n", l.Path, l.State, prefixed(": ", l.Detail))
		}
		fmt.Fprintf(tw, "%s\t%s\n", layout.SystemDaemonSocket, answer(st.Daemon != nil, st.DaemonError))
		if st.Helper != nil || st.HelperError != "" {
			fmt.Fprintf(tw, "%s\t%s\n", layout.SystemHelperSocket, answer(st.Helper != nil, st.HelperError))
		}
		tw.Flush()
		if !st.Systemd {
			fmt.Fprintln(w, "systemd is not running: units are not started")
		}
	}); err != nil {
		return err
	}
	if !st.Installed {
		return cli.Exit("", service.ExitNotFound)
	}
	return nil
}

func answer(ok bool, why string) string {
	if ok {
		return "answers"
	}
	return "no answer" + prefixed(": ", why)
}

func prefixed(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

func systemUninstall(c *cli.Context) error {
	if _, err := args(c, 0, 0); err != nil {
		return err
	}
	if err := needRoot(c); err != nil {
		return err
	}
	rep, err := systemOf(c).Uninstall(c.Context, c.String("prefix"), c.Bool("purge"))
	if rep != nil {
		if oerr := output(c, rep, func(w io.Writer) {
			if len(rep.Removed) == 0 {
				fmt.Fprintln(w, "nothing to remove")
			}
			for _, p := range rep.Removed {
				fmt.Fprintf(w, "removed %s\n", p)
			}
			for _, k := range rep.Kept {
				fmt.Fprintf(w, "kept    %s\n", k)
			}
		}); oerr != nil && err == nil {
			err = oerr
		}
	}
	return err
}

func systemRender(c *cli.Context) error {
	a, err := args(c, 1, 1)
	if err != nil {
		return err
	}
	files, err := packaging.Render(packaging.Config{Owner: c.String("owner"), Prefix: c.String("prefix"), Helper: c.String("helper")})
	if err != nil {
		return systemUsage(err)
	}
	if err := os.MkdirAll(a[0], 0o755); err != nil {
		return err
	}
	for p, b := range files {
		if err := os.WriteFile(filepath.Join(a[0], filepath.Base(p)), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
