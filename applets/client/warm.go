package client

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
)

func newImageWarmCommand() *cli.Command {
	return &cli.Command{
		Name: "warm",
		Usage: "save a warm snapshot of an image: a VM of this shape boots once, and later VMs of the image " +
			"and shape restore it instead of booting (vm create and vm run save one on their own after a boot)",
		ArgsUsage: "NAME",
		Flags: []cli.Flag{
			jsonFlag(),
			&cli.IntFlag{Name: "cpus", Value: api.DefaultCPUs, Usage: "virtual CPUs of the VMs it is for"},
			&cli.StringFlag{Name: "memory", Value: strconv.Itoa(api.DefaultMemoryMiB) + "M", Usage: "memory `SIZE` of the VMs it is for"},
			&cli.StringFlag{Name: "disk-size", Usage: "disk `SIZE` of the VMs it is for (default: the image's size)"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "do not show stages"},
		},
		Action: action(func(c *cli.Context, s *target) error {
			a, err := args(c, 1, 1)
			if err != nil {
				return err
			}
			p := api.ImageWarm{Name: a[0], CPUs: c.Int("cpus")}
			if p.MemoryMiB, err = parseMiB("--memory", c.String("memory")); err != nil {
				return err
			}
			if c.String("disk-size") != "" {
				if p.DiskMiB, err = parseMiB("--disk-size", c.String("disk-size")); err != nil {
					return err
				}
			}
			w, _, _, err := runOperation[api.WarmSnapshot](c, s, beginWith(api.Client.WarmImage, p))
			if err != nil {
				return err
			}
			return output(c, w, func(w2 io.Writer) { fmt.Fprintf(w2, "%s: %s\n", w.Image, warmSummary(w)) })
		}),
	}
}

// warmSummary is one line about a warm snapshot.
func warmSummary(w api.WarmSnapshot) string {
	disk := "the image's disk size"
	if w.DiskMiB > 0 {
		disk = strconv.Itoa(w.DiskMiB) + " MiB disk"
	}
	return fmt.Sprintf("for %d cpu, %d MiB memory, %s; %d MiB saved, %s", w.CPUs, w.MemoryMiB, disk,
		(w.MemoryBytes+w.DiskBytes)>>20, w.Created.Local().Format(time.DateTime))
}
