package client

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
)

func newKernelCommand() *cli.Command {
	return &cli.Command{
		Name:  "kernel",
		Usage: "minimal microVM kernels built from the distribution's kernel source",
		Subcommands: []*cli.Command{
			newKernelBuildCommand(),
			{
				Name: "list", Aliases: []string{"ls"}, Usage: "list built kernels", Flags: []cli.Flag{jsonFlag()},
				Action: action(func(c *cli.Context, s *target) error {
					ks, err := s.daemon().ListKernels(c.Context)
					if err != nil {
						return err
					}
					return output(c, ks, func(w io.Writer) {
						tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
						fmt.Fprintln(tw, "NAME\tRELEASE\tSIZE\tCREATED\tUSED BY")
						for _, k := range ks {
							fmt.Fprintf(tw, "%s\t%s\t%dM\t%s\t%s\n", k.Name, k.Release, k.SizeBytes>>20,
								k.Created.Local().Format(time.DateTime), strings.Join(k.UsedBy, ","))
						}
						tw.Flush()
					})
				}),
			},
			{Name: "show", Usage: "show one built kernel", ArgsUsage: "NAME", Flags: []cli.Flag{jsonFlag()}, Action: byName(api.Client.ShowKernel, "", printKernel)},
			{Name: "delete", Usage: "delete a built kernel no image uses", ArgsUsage: "NAME", Flags: []cli.Flag{jsonFlag()}, Action: byName(api.Client.DeleteKernel, "deleted", printKernel)},
		},
	}
}

func newKernelBuildCommand() *cli.Command {
	return &cli.Command{
		Name: "build",
		Usage: "build a minimal microVM kernel (tinyconfig and banger's fragment) from the distribution's " +
			"kernel source; minutes (stages on stderr; Ctrl-C cancels)",
		ArgsUsage: "[NAME]",
		Flags: []cli.Flag{
			jsonFlag(),
			&cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, Usage: "parallel compile `JOBS` (default: the host's CPUs)"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "do not show stages"},
		},
		Action: action(func(c *cli.Context, s *target) error {
			a, err := args(c, 0, 1)
			if err != nil {
				return err
			}
			p := api.KernelBuild{Jobs: c.Int("jobs")}
			if len(a) == 1 {
				p.Name = a[0]
			}
			k, _, _, err := runOperation[api.Kernel](c, s, beginWith(api.Client.BuildKernel, p))
			if err != nil {
				return err
			}
			return output(c, k, func(w io.Writer) { printKernel(w, k) })
		}),
	}
}

func printKernel(w io.Writer, k api.Kernel) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\n", k.Name)
	fmt.Fprintf(tw, "release:\t%s\n", k.Release)
	fmt.Fprintf(tw, "source:\t%s\n", k.Source)
	fmt.Fprintf(tw, "created:\t%s\n", k.Created.Local().Format(time.RFC3339))
	fmt.Fprintf(tw, "vmlinux:\t%s (%d MiB, sha256 %.16s)\n", k.Vmlinux, k.SizeBytes>>20, k.SHA256)
	fmt.Fprintf(tw, "config:\t%s\n", k.Config)
	fmt.Fprintf(tw, "build:\t%d objects in %s\n", k.Objects, time.Duration(k.BuildSeconds*float64(time.Second)).Round(time.Second))
	if len(k.UsedBy) > 0 {
		fmt.Fprintf(tw, "used by:\t%s\n", strings.Join(k.UsedBy, ", "))
	}
	tw.Flush()
}
