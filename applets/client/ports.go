package client

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
)

// Ports: what listens in a VM, and the host ports forwarded to it.

func newVMPortsCommand() *cli.Command {
	return &cli.Command{
		Name:      "ports",
		Usage:     "list a running VM's listening TCP ports and its published ports",
		ArgsUsage: "NAME",
		Flags:     []cli.Flag{jsonFlag()},
		Action: action(func(c *cli.Context, s *target) error {
			a, err := args(c, 1, 1)
			if err != nil {
				return err
			}
			res, err := s.daemon().VMPorts(c.Context, api.VMRef{Name: a[0]})
			if err != nil {
				return err
			}
			return output(c, res, func(w io.Writer) {
				published := map[int][]string{}
				for _, f := range res.Published {
					published[f.GuestPort] = append(published[f.GuestPort], net.JoinHostPort(f.HostAddr, strconv.Itoa(f.HostPort)))
				}
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "PROTO\tADDRESS\tPORT\tPUBLISHED")
				for _, p := range res.Listening {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", p.Proto, p.Address, p.Port, strings.Join(published[p.Port], ", "))
				}
				tw.Flush()
			})
		}),
	}
}

func newVMPortCommand() *cli.Command {
	change := func(name, usage string, call func(api.Client, context.Context, api.VMPort) (api.VM, error)) *cli.Command {
		return &cli.Command{
			Name:      name,
			Usage:     usage,
			ArgsUsage: "NAME HOST:GUEST",
			Flags:     []cli.Flag{jsonFlag()},
			Action: action(func(c *cli.Context, s *target) error {
				a, err := args(c, 2, 2)
				if err != nil {
					return err
				}
				f, err := parsePublish(a[1])
				if err != nil {
					return err
				}
				vm, err := call(s.daemon(), c.Context, api.VMPort{Name: a[0], PortForward: f})
				if err != nil {
					return err
				}
				return output(c, vm, func(w io.Writer) {})
			}),
		}
	}
	return &cli.Command{
		Name:  "port",
		Usage: "change a VM's published ports (also while it runs)",
		Subcommands: []*cli.Command{
			change("add", "forward 127.0.0.1:HOST to the VM's TCP port GUEST", api.Client.AddPort),
			change("remove", "stop forwarding HOST (GUEST must match)", api.Client.RemovePort),
		},
	}
}

// parsePublish reads [ADDR:]HOST:GUEST[/tcp], as docker's -p takes it;
// ADDR defaults to 127.0.0.1 (user-mode networking publishes on loopback).
func parsePublish(spec string) (api.PortForward, error) {
	bad := func(why string) (api.PortForward, error) {
		return api.PortForward{}, usageError(fmt.Errorf("--publish %q: %s; want HOST:GUEST, e.g. 8080:80", spec, why))
	}
	s, proto, _ := strings.Cut(spec, "/")
	if proto == "" {
		proto = "tcp"
	}
	if proto != "tcp" {
		return bad("only tcp is supported")
	}
	f := api.PortForward{Proto: proto, HostAddr: "127.0.0.1"}
	i := strings.LastIndex(s, ":")
	if i < 0 {
		return bad("no ':'")
	}
	host, guest := s[:i], s[i+1:]
	if j := strings.LastIndex(host, ":"); j >= 0 {
		f.HostAddr, host = strings.Trim(host[:j], "[]"), host[j+1:]
		// QEMU's user network forwards only from IPv4.
		if ip := net.ParseIP(f.HostAddr); ip == nil || ip.To4() == nil || !ip.IsLoopback() {
			return bad("the host address must be an IPv4 loopback address (127.0.0.0/8)")
		}
	}
	var err error
	if f.HostPort, err = strconv.Atoi(host); err != nil || f.HostPort < 1 || f.HostPort > 65535 {
		return bad("bad host port")
	}
	if f.GuestPort, err = strconv.Atoi(guest); err != nil || f.GuestPort < 1 || f.GuestPort > 65535 {
		return bad("bad guest port")
	}
	return f, nil
}
