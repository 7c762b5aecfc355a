package client

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"banger/internal/api"
	"banger/internal/session"
)

// vm run: banger's main job. A fresh VM, the workspace copied in, then a
// shell or one command, whose status becomes banger's.

func newVMRunCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "create a VM, copy a workspace in, and run a command or open a shell there",
		ArgsUsage: "[PATH] [-- COMMAND [ARG...]]\n\n" +
			"   With no PATH and no COMMAND: a shell in a fresh VM.\n" +
			"   PATH in a git work tree: its tracked files are copied to ~/REPO, the user's home (root's:\n" +
			"   /root; --include-untracked adds untracked files that are not ignored); any other directory\n" +
			"   is copied whole. The COMMAND starts there; banger exits with its status. Without one: the\n" +
			"   image's entrypoint and cmd (an OCI image's), else a shell.",
		Flags: append(vmShapeFlags(),
			&cli.BoolFlag{Name: "rm", Usage: "delete the VM when the command or shell ends (also on Ctrl-C)"},
			&cli.BoolFlag{Name: "detach", Aliases: []string{"d"}, Usage: "create the VM, copy the workspace, print the VM's name and leave it running"},
			&cli.BoolFlag{Name: "include-untracked", Usage: "also copy untracked files that git does not ignore"},
			&cli.StringSliceFlag{Name: "env", Aliases: []string{"e"}, Usage: "set `K=V` in the command's environment (repeatable)"},
			userFlag(),
			&cli.StringSliceFlag{Name: "collect", Usage: "after the command, also when it failed, copy `GUEST:HOST` out of the VM (as vm cp; a relative GUEST is in the workspace; repeatable)"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "do not show stages"},
		),
		Action: action(vmRun),
	}
}

func vmRun(c *cli.Context, s *target) error {
	pos, cmd, err := splitCommand(c, 0, 1)
	if err != nil {
		return err
	}
	detach, rm := c.Bool("detach"), c.Bool("rm")
	switch {
	case detach && rm:
		return usageError(errors.New("--detach and --rm contradict each other: a detached VM stays; delete it later with `banger vm delete`"))
	case detach && len(cmd) > 0:
		return usageError(errors.New("--detach runs no command: drop the command, then use `banger vm exec NAME -- COMMAND`"))
	}
	env, err := envFlags(c)
	if err != nil {
		return err
	}
	collect, err := collectFlags(c)
	if err != nil {
		return err
	}
	if detach && len(collect) > 0 {
		return usageError(errors.New("--detach runs no command to collect after: use `banger vm cp` later"))
	}
	create, err := createParams(c)
	if err != nil {
		return err
	}
	// The workspace is listed before the VM exists: a bad path costs no
	// boot.
	var ws *workspace
	if len(pos) == 1 {
		if ws, err = openWorkspace(pos[0], c.Bool("include-untracked")); err != nil {
			return err
		}
	}

	vm, err := runVMOperation(c, s, beginWith(api.Client.CreateVM, create))
	if err != nil {
		return err
	}
	if rm {
		// Deleting must happen even when Ctrl-C canceled the command's
		// context.
		defer deleteAfterRun(c, s, vm.Name)
	}
	sw := newStageWriter(c.App.ErrWriter, c.Bool("quiet"))
	dir := ""
	if ws != nil {
		if err := copyWorkspace(c, s, vm.Name, ws, sw.w); err != nil {
			return err
		}
		dir = ws.workdir()
	}
	if detach {
		fmt.Fprintln(c.App.Writer, vm.Name)
		return nil
	}
	p := api.VMExec{Name: vm.Name, Exec: session.Exec{Argv: cmd, Dir: dir, Env: env, User: c.String("user")}}
	if len(cmd) == 0 {
		p.Exec = shellExec(c, dir)
		p.Env, p.ImageCommand = env, true
	}
	err = runExec(c, s, p)
	return collectAfter(c, s, vm.Name, cmp.Or(dir, "~"), collect, err)
}

// collectPath is one --collect GUEST:HOST.
type collectPath struct{ guest, host string }

// collectFlags splits the --collect values at their first colon (a
// guest path rarely has one; a host path may).
func collectFlags(c *cli.Context) ([]collectPath, error) {
	var out []collectPath
	for _, v := range c.StringSlice("collect") {
		guest, host, ok := strings.Cut(v, ":")
		if !ok || guest == "" || host == "" {
			return nil, usageError(fmt.Errorf("--collect %q: want GUEST:HOST, such as build/out:./out", v))
		}
		out = append(out, collectPath{guest, host})
	}
	return out, nil
}

// collectAfter copies the --collect paths out of the VM once its command
// ended (ran is how), and before --rm deletes it. The command's status
// stays banger's; a copy that fails is said, and fails a command that
// succeeded.
func collectAfter(c *cli.Context, s *target, vm, workdir string, collect []collectPath, ran error) error {
	var failed error
	for _, cp := range collect {
		guest := cp.guest
		if !path.IsAbs(guest) && guest != "~" && !strings.HasPrefix(guest, "~/") {
			guest = path.Join(workdir, guest)
		}
		if err := copyOut(c, s, api.VMCopyOut{Name: vm, Path: guest, User: c.String("user")}, cp.host); err != nil {
			fmt.Fprintf(c.App.ErrWriter, "banger: --collect %s:%s: %v\n", cp.guest, cp.host, err)
			failed = cmp.Or(failed, err)
		}
	}
	return cmp.Or(ran, failed)
}

// vmShapeFlags are the flags that say what VM to make, shared by vm
// create and vm run.
func vmShapeFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "name", Usage: "the VM's `NAME`, a DNS label (default: generated)"},
		&cli.StringFlag{Name: "image", Value: api.DefaultImage, EnvVars: []string{"BANGER_IMAGE"}, Usage: "the `IMAGE` to boot: " + api.DefaultImage + " (Debian stable with git, make, gcc and python3, built on this host on first use) or " + api.TinyImage + " (busybox, no download), or one imported or built"},
		&cli.IntFlag{Name: "cpus", Value: api.DefaultCPUs, Usage: "virtual CPUs"},
		&cli.StringFlag{Name: "memory", Value: strconv.Itoa(api.DefaultMemoryMiB) + "M", Usage: "memory `SIZE` (M or G; a plain number is MiB)"},
		&cli.StringFlag{Name: "disk-size", Usage: "the VM's disk `SIZE` (M or G; default: the image's size)"},
		&cli.StringSliceFlag{Name: "publish", Aliases: []string{"p"}, Usage: "forward 127.0.0.1:`HOST:GUEST` to the guest's TCP port GUEST (repeatable; user network only)"},
		&cli.IntSliceFlag{Name: "allow-host", Usage: "let the guest reach the host's 127.0.0.1:`PORT` at 10.0.2.2:PORT (repeatable; user network only: by default a guest reaches nothing of the host)"},
		&cli.StringFlag{Name: "network", Value: api.NetworkUser, Usage: "`user` (a user-mode network: the internet, published ports, nothing of the host) or bridge (an address of its own on banger's bridge; needs the root helper)"},
		&cli.BoolFlag{Name: "cold", Usage: "boot, even when the image has a warm snapshot for this shape (and save none)"},
	}
}

// createParams reads vmShapeFlags.
func createParams(c *cli.Context) (api.VMCreate, error) {
	p := api.VMCreate{Name: c.String("name"), Image: c.String("image"), CPUs: c.Int("cpus"), Network: c.String("network"), Cold: c.Bool("cold"),
		AllowHost: c.IntSlice("allow-host")}
	switch p.Network {
	case api.NetworkUser, api.NetworkBridge:
	default:
		return p, usageError(fmt.Errorf("--network %q: want %s or %s", p.Network, api.NetworkUser, api.NetworkBridge))
	}
	var err error
	if p.MemoryMiB, err = parseMiB("--memory", c.String("memory")); err != nil {
		return p, err
	}
	if c.String("disk-size") != "" {
		if p.DiskMiB, err = parseMiB("--disk-size", c.String("disk-size")); err != nil {
			return p, err
		}
	}
	for _, spec := range c.StringSlice("publish") {
		f, err := parsePublish(spec)
		if err != nil {
			return p, err
		}
		p.Publish = append(p.Publish, f)
	}
	return p, nil
}

// copyWorkspace streams the workspace's tar into the VM.
func copyWorkspace(c *cli.Context, s *target, vm string, ws *workspace, log io.Writer) error {
	start := time.Now()
	st, err := sendTar(c, s, api.VMCopy{Name: vm, Dir: ws.dir(), User: c.String("user")}, func(w io.Writer) (int, int64, error) {
		st, err := ws.writeTar(w)
		return st.files, st.bytes, err
	})
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return err
		}
		return fmt.Errorf("copy the workspace: %w", err)
	}
	fmt.Fprintf(log, "copied %d files (%s) to %s:%s in %s\n", st.files, api.HumanBytes(st.bytes), vm, ws.dir(),
		fmtMillis(float64(time.Since(start).Microseconds())/1000))
	return nil
}

// deleteAfterRun deletes the VM of vm run --rm, whatever happened.
func deleteAfterRun(c *cli.Context, s *target, name string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Context), 2*time.Minute)
	defer cancel()
	if _, err := s.daemon().DeleteVM(ctx, api.VMDelete{Name: name, Force: true}); err != nil {
		fmt.Fprintf(c.App.ErrWriter, "banger: --rm: could not delete %s: %v\n", name, err)
	}
}
