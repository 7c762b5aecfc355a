package client

import (
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"
)

// banger network: the host side of bridged networking.

func newNetworkCommand() *cli.Command {
	return &cli.Command{
		Name:  "network",
		Usage: "banger's bridge, taps and NAT on this host",
		Subcommands: []*cli.Command{
			{
				Name: "reset",
				Usage: "remove banger's bridge, taps and NAT rule through the root helper " +
					"(refused while bridged VMs run; the next bridged boot makes them again)",
				Flags: []cli.Flag{jsonFlag()},
				Action: action(func(c *cli.Context, s *target) error {
					if _, err := args(c, 0, 0); err != nil {
						return err
					}
					res, err := s.daemon().ResetNetwork(c.Context)
					if err != nil {
						return err
					}
					if res.Removed == nil {
						res.Removed = []string{}
					}
					return output(c, res, func(w io.Writer) {
						if !res.Changed {
							fmt.Fprintln(w, "nothing to remove")
							return
						}
						if len(res.Removed) > 0 {
							fmt.Fprintf(w, "removed %s\n", strings.Join(res.Removed, ", "))
						}
						if res.NATTable {
							fmt.Fprintln(w, "removed banger's NAT table")
						}
					})
				}),
			},
		},
	}
}
