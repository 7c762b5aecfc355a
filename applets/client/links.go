package client

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"banger/packaging"
)

func newLinksCommand(env Env) *cli.Command {
	// linksAction runs fn on the binary and the links directory: the
	// argument, or the binary's own directory.
	linksAction := func(fn func(self, dir string) error) cli.ActionFunc {
		return action(func(c *cli.Context, s *target) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			a, err := args(c, 0, 1)
			if err != nil {
				return err
			}
			dir := filepath.Dir(self)
			if len(a) == 1 {
				dir = a[0]
			}
			if err := fn(self, dir); err != nil {
				return err
			}
			return printLinks(c, dir, self, env.Applets)
		})
	}
	return &cli.Command{
		Name:  "links",
		Usage: "the applet symlinks (bangerd, bangerd-root, ...) to this one binary",
		Subcommands: []*cli.Command{
			{
				Name:      "install",
				Usage:     "make a symlink to this binary for each applet",
				ArgsUsage: "[DIR] (default: the binary's own directory)",
				Flags:     []cli.Flag{jsonFlag()},
				Action: linksAction(func(self, dir string) error {
					return packaging.InstallLinks(dir, self, env.Applets)
				}),
			},
			{
				Name:      "check",
				Usage:     "list each applet's link and whether it runs this binary (exit 1 if one is missing or foreign)",
				ArgsUsage: "[DIR] (default: the binary's own directory)",
				Flags:     []cli.Flag{jsonFlag()},
				Action:    linksAction(func(self, dir string) error { return nil }),
			},
		},
	}
}

// printLinks reports the links in dir, failing when one is not right.
func printLinks(c *cli.Context, dir, self string, names []string) error {
	sts, err := packaging.CheckLinks(dir, self, names)
	if err != nil {
		return err
	}
	if err := output(c, sts, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "APPLET\tLINK\tSTATE")
		for _, s := range sts {
			state := s.State
			if s.Detail != "" {
				state += " (" + s.Detail + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Applet, s.Path, state)
		}
		tw.Flush()
	}); err != nil {
		return err
	}
	if !packaging.LinksOK(sts) {
		return fmt.Errorf("some applet links in %s are missing or foreign; run `banger links install %s`", dir, dir)
	}
	return nil
}
