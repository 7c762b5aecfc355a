package client

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/urfave/cli/v2"

	"banger/internal/api"
)

// newImageBuildCommand is `image build NAME`: an image from a recipe,
// given by flags, a TOML file, or both (the flags' lists come after the
// file's).
func newImageBuildCommand() *cli.Command {
	return &cli.Command{
		Name:      "build",
		Usage:     "build an image from a recipe: a base, packages, copies and commands (the same recipe and base are built once)",
		ArgsUsage: "NAME",
		Flags: []cli.Flag{
			jsonFlag(),
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "do not show stages"},
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "the recipe as a TOML `FILE` (distro, from, packages, copy, run); its relative paths are from its directory"},
			&cli.StringFlag{Name: "distro", Usage: "the base: a Debian suite built by mmdebstrap, as `debian/SUITE` (such as debian/bookworm)"},
			&cli.StringFlag{Name: "from", Usage: "the base: an `IMAGE` of banger's"},
			&cli.StringSliceFlag{Name: "package", Usage: "a Debian `PACKAGE` to install (repeatable)"},
			&cli.StringSliceFlag{Name: "copy", Usage: "copy a host file or directory into the guest, as `HOST:GUEST` (repeatable; a directory's content goes into GUEST)"},
			&cli.StringSliceFlag{Name: "run", Usage: "a shell `COMMAND` to run in the build's VM, with the network (repeatable, in order, after the copies)"},
			&cli.IntFlag{Name: "cpus", Usage: "the build VM's virtual CPUs (default: a VM's)"},
			&cli.StringFlag{Name: "memory", Usage: "the build VM's memory `SIZE` (M or G; default: a VM's; not part of the recipe)"},
		},
		Action: action(func(c *cli.Context, s *target) error {
			a, err := args(c, 1, 1)
			if err != nil {
				return err
			}
			r, err := recipeOf(c)
			if err != nil {
				return err
			}
			// An operation: its stages show the base's build and each step,
			// and Ctrl-C cancels the build, which leaves nothing behind.
			p := api.ImageBuild{Name: a[0], Recipe: r, CPUs: c.Int("cpus")}
			if c.String("memory") != "" {
				if p.MemoryMiB, err = parseMiB("--memory", c.String("memory")); err != nil {
					return err
				}
			}
			im, _, _, err := runOperation[api.Image](c, s, beginWith(api.Client.BeginBuildImage, p))
			if err != nil {
				return err
			}
			return output(c, im, func(w io.Writer) { printImage(w, im) })
		}),
	}
}

// recipeOf is the recipe of the command's file and flags, host paths
// absolute (the daemon reads them).
func recipeOf(c *cli.Context) (api.Recipe, error) {
	var r api.Recipe
	if f := c.String("file"); f != "" {
		var err error
		if r, err = readRecipe(f); err != nil {
			return r, err
		}
	}
	if c.IsSet("distro") || c.IsSet("from") {
		// A base given by a flag replaces the file's.
		r.Distro, r.From = c.String("distro"), c.String("from")
	}
	r.Packages = append(r.Packages, c.StringSlice("package")...)
	r.Run = append(r.Run, c.StringSlice("run")...)
	copies, err := absCopies(c.StringSlice("copy"), "")
	if err != nil {
		return r, err
	}
	r.Copy = append(r.Copy, copies...)
	if (r.Distro == "") == (r.From == "") {
		return r, usageError(errors.New("give the base: --distro debian/SUITE or --from IMAGE (or either in --file), one of them"))
	}
	return r, nil
}

// readRecipe reads a TOML recipe; a key it does not know is an error
// (a typo would otherwise build something else).
func readRecipe(file string) (api.Recipe, error) {
	var r api.Recipe
	md, err := toml.DecodeFile(file, &r)
	if err != nil {
		return r, usageError(fmt.Errorf("recipe %s: %w", file, err))
	}
	if u := md.Undecoded(); len(u) > 0 {
		return r, usageError(fmt.Errorf("recipe %s: unknown key %s (it has distro, from, packages, copy, run)", file, u[0]))
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return r, err
	}
	r.Copy, err = absCopies(r.Copy, filepath.Dir(abs))
	return r, err
}

// absCopies makes the host side of each HOST:GUEST absolute, relative
// to dir ("" for this shell's directory). The split is at the last
// colon, as the daemon's.
func absCopies(copies []string, dir string) ([]string, error) {
	out := make([]string, 0, len(copies))
	for _, c := range copies {
		i := strings.LastIndex(c, ":")
		if i <= 0 || !strings.HasPrefix(c[i+1:], "/") {
			return nil, usageError(fmt.Errorf("copy %q is not HOST:GUEST with an absolute GUEST path, such as ./app:/opt/app", c))
		}
		host := c[:i]
		if dir != "" && !filepath.IsAbs(host) {
			host = filepath.Join(dir, host)
		}
		host, err := filepath.Abs(host)
		if err != nil {
			return nil, err
		}
		out = append(out, host+":"+c[i+1:])
	}
	return out, nil
}
