package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
)

// byName is the action of a `show NAME` or `delete NAME` command: it
// makes the call with the name and prints the result, or "NAME done"
// when done is set.
func byName[T any](call func(api.Client, context.Context, api.VMRef) (T, error), done string, print func(io.Writer, T)) cli.ActionFunc {
	return action(func(c *cli.Context, s *target) error {
		a, err := args(c, 1, 1)
		if err != nil {
			return err
		}
		v, err := call(s.daemon(), c.Context, api.VMRef{Name: a[0]})
		if err != nil {
			return err
		}
		return output(c, v, func(w io.Writer) {
			if done != "" {
				fmt.Fprintf(w, "%s %s\n", a[0], done)
				return
			}
			print(w, v)
		})
	})
}

func newImageCommand() *cli.Command {
	return &cli.Command{
		Name:  "image",
		Usage: "the images VMs boot: a kernel, an optional initrd and a root file system",
		Subcommands: []*cli.Command{
			newImageImportCommand(),
			newImageCommitCommand(),
			newImageBuildCommand(),
			{
				Name: "list", Aliases: []string{"ls"}, Usage: "list images", Flags: []cli.Flag{jsonFlag()},
				Action: action(func(c *cli.Context, s *target) error {
					ims, err := s.daemon().ListImages(c.Context)
					if err != nil {
						return err
					}
					return output(c, ims, func(w io.Writer) {
						tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
						fmt.Fprintln(tw, "NAME\tDIGEST\tROOTFS\tCREATED\tPROBLEM")
						for _, im := range ims {
							fmt.Fprintf(tw, "%s\t%.19s\t%dM\t%s\t%s\n", im.Name, im.Digest, im.RootfsMiB, im.Created.Local().Format(time.DateTime), im.Problem)
						}
						tw.Flush()
					})
				}),
			},
			{Name: "show", Usage: "show one image", ArgsUsage: "NAME", Flags: []cli.Flag{jsonFlag()}, Action: byName(api.Client.ShowImage, "", printImage)},
			newImageWarmCommand(),
			{Name: "delete", Usage: "delete an image no VM uses", ArgsUsage: "NAME", Flags: []cli.Flag{jsonFlag()}, Action: byName(api.Client.DeleteImage, "deleted", printImage)},
		},
	}
}

func newImageImportCommand() *cli.Command {
	return &cli.Command{
		Name:      "import",
		Usage:     "make an image from a root file system (a directory, a tarball, an ext4 file or an OCI image) and a kernel (default: banger's)",
		ArgsUsage: "NAME",
		Flags: []cli.Flag{
			jsonFlag(),
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "do not show stages"},
			&cli.StringFlag{Name: "kernel", Usage: "the kernel `FILE` (bzImage or vmlinux; a bzImage is uncompressed once, here; default: the built default kernel, else the host's)"},
			&cli.StringFlag{Name: "kernel-name", Usage: "a kernel built by `banger kernel build` (its `NAME`), instead of --kernel"},
			&cli.StringFlag{Name: "initrd", Usage: "an initramfs `FILE` (default: one made of the kernel's guest modules, when it has them as modules)"},
			&cli.StringFlag{Name: "rootfs-dir", Usage: "the root file system as a `DIR`"},
			&cli.StringFlag{Name: "rootfs-tar", Usage: "the root file system as a tarball `FILE` (plain, gzip, xz, zstd, bzip2)"},
			&cli.StringFlag{Name: "rootfs-ext4", Usage: "the root file system as an ext4 `FILE`"},
			&cli.StringFlag{Name: "oci", Usage: "the root file system of an OCI image `REF` (linux/amd64): docker://HOST/REPO:TAG or @sha256:…, oci:DIR[:TAG], docker-archive:FILE or oci-archive:FILE"},
			&cli.StringFlag{Name: "kernel-args", Usage: "extra kernel `ARGS` the image boots with"},
			&cli.StringFlag{Name: "size", Usage: "the root file system's `SIZE` (M or G; default: its content plus headroom)"},
		},
		Action: action(func(c *cli.Context, s *target) error {
			a, err := args(c, 1, 1)
			if err != nil {
				return err
			}
			p := api.ImageImport{Name: a[0], KernelArgs: c.String("kernel-args"), KernelName: c.String("kernel-name")}
			if c.String("kernel") != "" && p.KernelName != "" {
				return usageError(errors.New("give --kernel or --kernel-name, not both"))
			}
			sources := 0
			for _, f := range []struct {
				flag string
				dst  *string
			}{{"kernel", &p.Kernel}, {"initrd", &p.Initrd}, {"rootfs-dir", &p.RootfsDir}, {"rootfs-tar", &p.RootfsTar}, {"rootfs-ext4", &p.RootfsExt4}} {
				if v := c.String(f.flag); v != "" {
					// The daemon reads the files: give it paths that do not
					// depend on this shell's directory.
					if *f.dst, err = filepath.Abs(v); err != nil {
						return err
					}
					if strings.HasPrefix(f.flag, "rootfs-") {
						sources++
					}
				}
			}
			if v := c.String("oci"); v != "" {
				if p.OCI, err = ociRef(v); err != nil {
					return err
				}
				sources++
			}
			if sources != 1 {
				return usageError(errors.New("give exactly one of --rootfs-dir, --rootfs-tar, --rootfs-ext4 or --oci"))
			}
			if c.String("size") != "" {
				if p.SizeMiB, err = parseMiB("--size", c.String("size")); err != nil {
					return err
				}
			}
			// An operation: its stage shows the bytes of an OCI image read,
			// and Ctrl-C cancels the import, which leaves nothing behind.
			im, _, _, err := runOperation[api.Image](c, s, beginWith(api.Client.BeginImportImage, p))
			if err != nil {
				return err
			}
			return output(c, im, func(w io.Writer) { printImage(w, im) })
		}),
	}
}

// newImageCommitCommand is `image commit VM NAME`: provision a VM once,
// then start fresh VMs of what it became.
func newImageCommitCommand() *cli.Command {
	return &cli.Command{
		Name:      "commit",
		Usage:     "make an image of a VM's disk (a running VM is paused for the copy, then runs on)",
		ArgsUsage: "VM NAME",
		Flags: []cli.Flag{
			jsonFlag(),
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "do not show stages"},
		},
		Action: action(func(c *cli.Context, s *target) error {
			a, err := args(c, 2, 2)
			if err != nil {
				return err
			}
			im, _, _, err := runOperation[api.Image](c, s, beginWith(api.Client.BeginCommitImage, api.ImageCommit{VM: a[0], Name: a[1]}))
			if err != nil {
				return err
			}
			return output(c, im, func(w io.Writer) { printImage(w, im) })
		}),
	}
}

// ociRef checks an OCI reference and makes its path absolute: the
// daemon reads it.
func ociRef(v string) (string, error) {
	ref, err := api.ParseOCIRef(v)
	if err != nil {
		return "", usageError(err)
	}
	if ref, err = ref.Abs(); err != nil {
		return "", err
	}
	return ref.String(), nil
}

func printImage(w io.Writer, im api.Image) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\n", im.Name)
	fmt.Fprintf(tw, "digest:\t%s\n", im.Digest)
	fmt.Fprintf(tw, "created:\t%s\n", im.Created.Local().Format(time.RFC3339))
	fmt.Fprintf(tw, "root fs:\t%d MiB\n", im.RootfsMiB)
	if im.KernelArgs != "" {
		fmt.Fprintf(tw, "kernel args:\t%s\n", im.KernelArgs)
	}
	fmt.Fprintf(tw, "directory:\t%s\n", im.Dir)
	if o := im.OCI; o != nil {
		printOCI(tw, *o)
	}
	if im.BuildKey != "" {
		fmt.Fprintf(tw, "build key:\t%s\n", im.BuildKey)
	}
	for _, n := range im.Notes {
		fmt.Fprintf(tw, "note:\t%s\n", n)
	}
	if im.Problem != "" {
		fmt.Fprintf(tw, "problem:\t%s\n", im.Problem)
	}
	if w := im.Warm; w != nil {
		fmt.Fprintf(tw, "warm snapshot:\t%s\n", warmSummary(*w))
	}
	if st := im.Standby; st != nil && st.Summary() != "" {
		fmt.Fprintf(tw, "standby:\t%s\n", st.Summary())
	}
	tw.Flush()
}

// printOCI shows what the OCI image an image was made from says of
// itself: its reference and digest, and its config.
func printOCI(w io.Writer, o api.OCIImage) {
	fmt.Fprintf(w, "oci image:\t%s\n", o.Reference)
	fmt.Fprintf(w, "oci digest:\t%s\n", o.Digest)
	for _, e := range o.Env {
		fmt.Fprintf(w, "oci env:\t%s\n", e)
	}
	for _, f := range []struct{ name, v string }{{"workdir", o.WorkingDir}, {"user", o.User}} {
		if f.v != "" {
			fmt.Fprintf(w, "oci %s:\t%s\n", f.name, f.v)
		}
	}
	for _, f := range []struct {
		name string
		v    []string
	}{{"entrypoint", o.Entrypoint}, {"cmd", o.Cmd}} {
		if len(f.v) > 0 {
			fmt.Fprintf(w, "oci %s:\t%q\n", f.name, f.v)
		}
	}
}
