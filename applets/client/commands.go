package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
	"banger/rpc"
)

func newPingCommand() *cli.Command {
	return &cli.Command{
		Name:  "ping",
		Usage: "check that the daemon answers (starting it if needed)",
		Flags: []cli.Flag{jsonFlag()},
		Action: action(func(c *cli.Context, s *target) error {
			res, err := s.daemon().Ping(c.Context)
			if err != nil {
				return err
			}
			return output(c, res, func(w io.Writer) {
				fmt.Fprintf(w, "bangerd %s, pid %d, up %s\n", res.Version, res.PID, fmtUptime(res.UptimeMS))
			})
		}),
	}
}

// versionReport is `banger version --json`.
type versionReport struct {
	Client      api.Build          `json:"client"`
	Protocol    int                `json:"protocol"`
	Daemon      *api.VersionResult `json:"daemon,omitempty"`
	DaemonError string             `json:"daemon_error,omitempty"`
	Helper      string             `json:"helper,omitempty"`
	HelperError string             `json:"helper_error,omitempty"`
}

func newVersionCommand(env Env) *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the versions of the client, the daemon and the root helper",
		Flags: []cli.Flag{jsonFlag()},
		// It reports a daemon that is down rather than starting one: asking
		// for versions should not change what runs.
		Action: action(func(c *cli.Context, s *target) error {
			rep := versionReport{Client: env.Build, Protocol: rpc.Version}
			if d, err := s.running().Version(c.Context); err != nil {
				rep.DaemonError = errorText(err)
			} else {
				rep.Daemon = &d
				if h, err := s.running().HostCheck(c.Context); err != nil {
					rep.HelperError = errorText(err)
				} else {
					rep.Helper = h.Helper.Version
				}
			}
			return output(c, rep, func(w io.Writer) {
				fmt.Fprintf(w, "client: %s (protocol %d)\n", rep.Client, rep.Protocol)
				if rep.Daemon != nil {
					fmt.Fprintf(w, "daemon: %s (protocol %d, %s)\n", rep.Daemon.Build, rep.Daemon.Protocol, rep.Daemon.Go)
				} else {
					fmt.Fprintf(w, "daemon: %s\n", rep.DaemonError)
				}
				switch {
				case rep.Helper != "":
					fmt.Fprintf(w, "helper: %s\n", rep.Helper)
				case rep.HelperError != "":
					fmt.Fprintf(w, "helper: %s\n", rep.HelperError)
				}
			})
		}),
	}
}

func newHostCommand() *cli.Command {
	return &cli.Command{
		Name:  "host",
		Usage: "the host banger runs on",
		Subcommands: []*cli.Command{{
			Name:  "check",
			Usage: "ask the daemon to reach the root helper and report what it said",
			Flags: []cli.Flag{jsonFlag()},
			Action: action(func(c *cli.Context, s *target) error {
				res, err := s.daemon().HostCheck(c.Context)
				if err != nil {
					return err
				}
				return output(c, res, func(w io.Writer) {
					fmt.Fprintf(w, "helper:       %s (%s)\n", res.HelperMode, res.HelperPath)
					fmt.Fprintf(w, "version:      %s\n", res.Helper.Version)
					fmt.Fprintf(w, "euid:         %d\n", res.Helper.EUID)
					fmt.Fprintf(w, "capabilities: %s (%d: %s)\n", res.Helper.CapEffective, len(res.Helper.Capabilities), strings.Join(res.Helper.Capabilities, ","))
				})
			}),
		}},
	}
}

func newDaemonCommand() *cli.Command {
	return &cli.Command{
		Name:  "daemon",
		Usage: "start, stop or inspect the user-mode daemon (bangerd)",
		Subcommands: []*cli.Command{
			{
				Name:  "start",
				Usage: "start bangerd in the background and wait until it answers",
				Flags: []cli.Flag{jsonFlag()},
				Action: action(func(c *cli.Context, s *target) error {
					res, err := s.running().Ping(c.Context)
					already := err == nil
					if !already {
						if err := s.startDaemon(c.Context); err != nil {
							return err
						}
						if res, err = s.running().Ping(c.Context); err != nil {
							return err
						}
					}
					return output(c, daemonStatus(s, &res), func(w io.Writer) {
						verb := "started"
						if already {
							verb = "already running"
						}
						fmt.Fprintf(w, "bangerd %s (pid %d, %s)\n", verb, res.PID, s.socket)
					})
				}),
			},
			{
				Name:  "stop",
				Usage: "ask bangerd to stop, and wait until it has",
				Flags: []cli.Flag{jsonFlag()},
				Action: action(func(c *cli.Context, s *target) error {
					res, err := s.running().Ping(c.Context)
					if err != nil {
						return output(c, daemonStatus(s, nil), func(w io.Writer) {
							fmt.Fprintf(w, "bangerd is not running (%s)\n", s.socket)
						})
					}
					if err := s.running().Shutdown(c.Context); err != nil {
						return err
					}
					if err := waitGone(c.Context, s, res.PID); err != nil {
						return err
					}
					return output(c, daemonStatus(s, nil), func(w io.Writer) {
						fmt.Fprintf(w, "bangerd stopped (was pid %d)\n", res.PID)
					})
				}),
			},
			{
				Name:  "status",
				Usage: "say whether bangerd runs (exit 3 when it does not)",
				Flags: []cli.Flag{jsonFlag()},
				Action: action(func(c *cli.Context, s *target) error {
					res, err := s.running().Ping(c.Context)
					if err != nil {
						if jsonOutput(c) {
							output(c, daemonStatus(s, nil), nil)
						}
						return err
					}
					return output(c, daemonStatus(s, &res), func(w io.Writer) {
						fmt.Fprintf(w, "bangerd %s running, pid %d, up %s, socket %s\n", res.Version, res.PID, fmtUptime(res.UptimeMS), s.socket)
					})
				}),
			},
		},
	}
}

// statusReport is the JSON of the daemon subcommands.
type statusReport struct {
	Running bool   `json:"running"`
	Socket  string `json:"socket"`
	PID     int    `json:"pid,omitempty"`
	Version string `json:"version,omitempty"`
}

func daemonStatus(s *target, res *api.PingResult) statusReport {
	r := statusReport{Socket: s.socket}
	if res != nil {
		r.Running, r.PID, r.Version = true, res.PID, res.Version
	}
	return r
}

// waitGone waits until the daemon no longer answers and its process has
// exited, bounded by the daemon's own shutdown grace.
func waitGone(ctx context.Context, s *target, pid int) error {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(s.socket); os.IsNotExist(err) && !processAlive(pid) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("bangerd (pid %d) did not stop within 15s", pid)
}

func processAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	return p.Signal(syscallZero) == nil
}

func fmtUptime(ms float64) string {
	return time.Duration(ms * float64(time.Millisecond)).Round(time.Millisecond).String()
}

// lastErrorRecord returns "msg: error" of the last error-level record in a
// JSON log.
func lastErrorRecord(log []byte) string {
	var last string
	for line := range bytes.Lines(log) {
		var r struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
			Error string `json:"error"`
		}
		if json.Unmarshal(line, &r) == nil && r.Level == "error" {
			last = r.Msg
			if r.Error != "" {
				last += ": " + r.Error
			}
		}
	}
	return last
}

// errorText is err as the one line banger prints for it.
func errorText(err error) string { return err.Error() }
