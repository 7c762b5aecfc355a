package client

import (
	"context"
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
	"banger/internal/layout"
	"banger/internal/privapi"
	"banger/packaging"
	"banger/rpc"
)

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
					jsonFlag(), rootFlag, prefixFlag,
					&cli.StringFlag{Name: "owner", Required: true, Usage: "the `USER` whose daemon may use the root helper"},
					&cli.StringFlag{Name: "helper", Value: packaging.HelperService, Usage: "how the daemon reaches the root helper: service (bangerd-root.service) or sudo (a sudoers rule)"},
					&cli.DurationFlag{Name: "timeout", Value: SystemWaitTimeout, Usage: "how long to wait for started units to answer"},
				},
				Action: action(systemInstall),
			},
			{
				Name:   "status",
				Usage:  "what is installed, and whether the services answer (exit 4 when banger is not installed)",
				Flags:  []cli.Flag{jsonFlag(), rootFlag, prefixFlag},
				Action: action(systemStatusAction),
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
				Action: action(systemRender),
			},
			{
				Name:  "uninstall",
				Usage: "stop the units and remove what install made (--purge: also /etc/banger and /var/lib/banger)",
				Flags: []cli.Flag{
					jsonFlag(), rootFlag, prefixFlag,
					&cli.BoolFlag{Name: "purge", Usage: "also remove the configuration and the daemon's state (VMs, images)"},
				},
				Action: action(systemUninstall),
			},
		},
	}
}

func systemOf(c *cli.Context) packaging.System {
	return packaging.System{Root: c.String("root"), Applets: envOf(c).Applets}
}

// needRoot refuses a command that writes the system's files.
func needRoot(c *cli.Context) error {
	if os.Geteuid() == 0 {
		return nil
	}
	return &cliError{code: rpc.CodeUnauthorized, exit: ExitDenied,
		err: fmt.Errorf("%s writes system files and must run as root (sudo %s ...)", c.Command.HelpName, c.Command.HelpName)}
}

func systemInstall(c *cli.Context, _ *target) error {
	if _, err := args(c, 0, 0); err != nil {
		return err
	}
	if err := needRoot(c); err != nil {
		return err
	}
	cfg, err := ownerConfig(c.String("owner"))
	if err != nil {
		return usageError(err)
	}
	cfg.Prefix, cfg.Helper = c.String("prefix"), c.String("helper")
	if err := cfg.Validate(); err != nil {
		return usageError(err)
	}
	sys := systemOf(c)
	ir, err := sys.Install(c.Context, cfg, "/proc/self/exe")
	var pe *packaging.PrefixError
	if errors.As(err, &pe) {
		return &cliError{code: rpc.CodeUnauthorized, exit: ExitDenied, err: err}
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
		fmt.Fprintf(w, "installed banger %s for %s (uid %d), helper: %s\n", envOf(c).Build, cfg.Owner, cfg.UID, cfg.Helper)
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
	return &cliError{code: rpc.CodeUnavailable, exit: ExitUnavailable, err: fmt.Errorf(format, a...)}
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

func systemStatusAction(c *cli.Context, _ *target) error {
	if _, err := args(c, 0, 0); err != nil {
		return err
	}
	sys := systemOf(c)
	st := systemStatus{Status: sys.Status(c.Context, c.String("prefix"))}
	ctx, cancel := context.WithTimeout(c.Context, 2*time.Second)
	defer cancel()
	if d, err := (api.Client{Caller: &rpc.Client{Socket: sys.Path(layout.SystemDaemonSocket)}}).Ping(ctx); err != nil {
		st.DaemonError = errorText(err)
	} else {
		st.Daemon = &d
	}
	if st.Config == nil || st.Config.Helper == packaging.HelperService {
		if h, err := (privapi.Client{Caller: &rpc.Client{Socket: sys.Path(layout.SystemHelperSocket)}}).Ping(ctx); err != nil {
			st.HelperError = errorText(err)
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
		return exitStatus(ExitNotFound)
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

func systemUninstall(c *cli.Context, _ *target) error {
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

func systemRender(c *cli.Context, _ *target) error {
	a, err := args(c, 1, 1)
	if err != nil {
		return err
	}
	files, err := packaging.Render(packaging.Config{Owner: c.String("owner"), Prefix: c.String("prefix"), Helper: c.String("helper")})
	if err != nil {
		return usageError(err)
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
