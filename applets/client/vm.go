package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
	"banger/internal/printable"
)

func newVMCommand() *cli.Command {
	return &cli.Command{
		Name:  "vm",
		Usage: "create, run and manage microVMs",
		Subcommands: []*cli.Command{
			newVMCreateCommand(),
			newVMOperationCommand("start", "start a stopped VM and wait until its agent is ready", api.Client.StartVM),
			newVMOperationCommand("restart", "stop a VM (if it runs) and start it again", api.Client.RestartVM),
			newVMStopCommand(),
			newVMRefCommand("kill", "stop a VM at once, without a clean shutdown", api.Client.KillVM),
			newVMDeleteCommand(),
			newVMPruneCommand(),
			newVMListCommand(),
			newVMRefCommand("show", "show one VM", api.Client.ShowVM),
			newVMLogsCommand(),
			newVMRunCommand(),
			newVMExecCommand(),
			newVMCpCommand(),
			newVMShellCommand(),
			newVMPortsCommand(),
			newVMPortCommand(),
		},
	}
}

func newVMCreateCommand() *cli.Command {
	return &cli.Command{
		Name:  "create",
		Usage: "create a VM and boot it (stages on stderr; the VM's name on stdout)",
		Flags: append(vmShapeFlags(),
			jsonFlag(),
			&cli.BoolFlag{Name: "no-start", Usage: "create the VM but do not boot it"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "do not show stages"},
		),
		Action: action(func(c *cli.Context, s *target) error {
			if _, err := args(c, 0, 0); err != nil {
				return err
			}
			p, err := createParams(c)
			if err != nil {
				return err
			}
			p.NoStart = c.Bool("no-start")
			vm, err := runVMOperation(c, s, beginWith(api.Client.CreateVM, p))
			if err != nil {
				return err
			}
			return output(c, vm, func(w io.Writer) { fmt.Fprintln(w, vm.Name) })
		}),
	}
}

// runVMOperation begins a VM operation, follows its stages and returns the
// VM it ends with.
func runVMOperation(c *cli.Context, s *target, begin beginner) (api.VM, error) {
	vm, op, sw, err := runOperation[api.VM](c, s, begin)
	if err != nil {
		return api.VM{}, err
	}
	if op.Finished != nil {
		verb := "ready"
		if vm.State != "running" {
			verb = vm.State
		}
		fmt.Fprintf(sw.w, "%s %s in %s\n", vm.Name, verb, fmtMillis(float64(op.Finished.Sub(op.Created).Microseconds())/1000))
	}
	return vm, nil
}

func newVMOperationCommand(name, usage string, begin func(api.Client, context.Context, api.VMRef) (api.Operation, error)) *cli.Command {
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "NAME",
		Flags:     []cli.Flag{jsonFlag(), &cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "do not show stages"}},
		Action: action(func(c *cli.Context, s *target) error {
			a, err := args(c, 1, 1)
			if err != nil {
				return err
			}
			vm, err := runVMOperation(c, s, beginWith(begin, api.VMRef{Name: a[0]}))
			if err != nil {
				return err
			}
			return output(c, vm, func(w io.Writer) {})
		}),
	}
}

// newVMRefCommand is a command that makes a call with one VM name and
// prints the VM it gets back.
func newVMRefCommand(name, usage string, call func(api.Client, context.Context, api.VMRef) (api.VM, error)) *cli.Command {
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "NAME",
		Flags:     []cli.Flag{jsonFlag()},
		Action: action(func(c *cli.Context, s *target) error {
			a, err := args(c, 1, 1)
			if err != nil {
				return err
			}
			vm, err := call(s.daemon(), c.Context, api.VMRef{Name: a[0]})
			if err != nil {
				return err
			}
			return output(c, vm, func(w io.Writer) { printVM(w, vm) })
		}),
	}
}

func newVMStopCommand() *cli.Command {
	return &cli.Command{
		Name:      "stop",
		Usage:     "shut a VM down cleanly (killed if it does not stop in time)",
		ArgsUsage: "NAME",
		Flags:     []cli.Flag{jsonFlag(), &cli.DurationFlag{Name: "timeout", Value: 30 * time.Second, Usage: "how long a clean shutdown may take"}},
		Action: action(func(c *cli.Context, s *target) error {
			a, err := args(c, 1, 1)
			if err != nil {
				return err
			}
			p := api.VMStop{Name: a[0], TimeoutMS: int(c.Duration("timeout").Milliseconds())}
			vm, err := s.daemon().StopVM(c.Context, p)
			if err != nil {
				return err
			}
			return output(c, vm, func(w io.Writer) { fmt.Fprintf(w, "%s %s\n", vm.Name, vm.State) })
		}),
	}
}

func newVMDeleteCommand() *cli.Command {
	return &cli.Command{
		Name:      "delete",
		Usage:     "delete a VM: its process (killed if it runs), disk, files and record",
		ArgsUsage: "NAME",
		Flags:     []cli.Flag{jsonFlag(), &cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "accepted for scripts; a running VM is always killed"}},
		Action: action(func(c *cli.Context, s *target) error {
			a, err := args(c, 1, 1)
			if err != nil {
				return err
			}
			vm, err := s.daemon().DeleteVM(c.Context, api.VMDelete{Name: a[0], Force: c.Bool("force")})
			if err != nil {
				return err
			}
			return output(c, vm, func(w io.Writer) { fmt.Fprintf(w, "%s deleted\n", vm.Name) })
		}),
	}
}

func newVMPruneCommand() *cli.Command {
	return &cli.Command{
		Name:  "prune",
		Usage: "delete every VM that is not running",
		Flags: []cli.Flag{jsonFlag()},
		Action: action(func(c *cli.Context, s *target) error {
			res, err := s.daemon().PruneVMs(c.Context)
			if err != nil {
				return err
			}
			return output(c, res, func(w io.Writer) {
				for _, n := range res.Deleted {
					fmt.Fprintf(w, "%s deleted\n", n)
				}
			})
		}),
	}
}

func newVMListCommand() *cli.Command {
	return &cli.Command{
		Name:    "list",
		Aliases: []string{"ls"},
		Usage:   "list VMs",
		Flags:   []cli.Flag{jsonFlag()},
		Action: action(func(c *cli.Context, s *target) error {
			vms, err := s.daemon().ListVMs(c.Context)
			if err != nil {
				return err
			}
			if vms == nil {
				vms = []api.VM{}
			}
			return output(c, vms, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tSTATE\tIMAGE\tCPUS\tMEMORY\tCREATED")
				for _, vm := range vms {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%dM\t%s\n", vm.Name, vm.State, vm.Image, vm.CPUs, vm.MemoryMiB, vm.Created.Local().Format(time.DateTime))
				}
				tw.Flush()
			})
		}),
	}
}

func newVMLogsCommand() *cli.Command {
	return &cli.Command{
		Name:      "logs",
		Usage:     "print a VM's serial console",
		ArgsUsage: "NAME",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing while the VM runs"},
			&cli.BoolFlag{Name: "raw", Usage: "the console's bytes as the guest wrote them, control characters and all (for a file, not a terminal)"},
		},
		Action: action(func(c *cli.Context, s *target) error {
			a, err := args(c, 1, 1)
			if err != nil {
				return err
			}
			p := api.VMLogs{Name: a[0]}
			// The console is the guest's, and the guest is untrusted: its
			// escape sequences do not reach the terminal.
			out := io.Writer(printable.NewWriter(c.App.Writer))
			if c.Bool("raw") {
				out = c.App.Writer
			}
			for {
				res, err := s.daemon().VMLogs(c.Context, p)
				if err != nil {
					return err
				}
				if _, err := out.Write(res.Data); err != nil {
					return err
				}
				p.Offset = res.Next
				if len(res.Data) > 0 {
					continue // a console longer than one answer: read on
				}
				if !c.Bool("follow") || !res.Running {
					return nil
				}
				select {
				case <-c.Context.Done():
					return nil
				case <-time.After(200 * time.Millisecond):
				}
			}
		}),
	}
}

func printVM(w io.Writer, vm api.VM) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("name", vm.Name)
	row("id", vm.ID)
	row("state", vm.State)
	row("image", vm.Image)
	row("cpus", strconv.Itoa(vm.CPUs))
	row("memory", strconv.Itoa(vm.MemoryMiB)+" MiB")
	if vm.DiskMiB > 0 {
		row("disk", strconv.Itoa(vm.DiskMiB)+" MiB")
	}
	row("network", vm.Network)
	row("address", vm.Address)
	row("dns name", vm.DNSName)
	var ports []string
	for _, f := range vm.Ports {
		ports = append(ports, fmt.Sprintf("%s:%d->%d/%s", f.HostAddr, f.HostPort, f.GuestPort, f.Proto))
	}
	row("ports", strings.Join(ports, ", "))
	row("created", vm.Created.Local().Format(time.RFC3339))
	if vm.PID > 0 {
		row("pid", strconv.Itoa(vm.PID))
	}
	row("boot id", vm.BootID)
	row("directory", vm.InstanceDir)
	row("last error", vm.LastError)
	tw.Flush()
}

// parseMiB reads a size flag (api.ParseMiB); a bad one is a usage error.
func parseMiB(flag, s string) (int, error) {
	n, err := api.ParseMiB(flag, s)
	if err != nil {
		return 0, usageError(err)
	}
	return n, nil
}

func decodeResult(op api.Operation, v any) error {
	if len(op.Result) == 0 {
		return errors.New("the operation returned no result")
	}
	return json.Unmarshal(op.Result, v)
}
