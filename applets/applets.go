// Package applets is the table of banger's applets and the dispatch that
// runs one, busybox-style, by the name the binary was started under.
package applets

import (
	"fmt"
	"os"

	"banger/applets/agent"
	"banger/applets/client"
	"banger/applets/daemon"
	"banger/applets/helper"
	"banger/internal/api"
	"banger/internal/registry"
)

// Table returns the table of every applet of this build.
func Table(build api.Build) *registry.Table {
	t := &registry.Table{}
	t.Register(registry.Applet{Name: api.AppletDaemon, Summary: "the daemon, as the owner user",
		Run: func(args []string) int { return daemon.Main(build, args) }})
	t.Register(registry.Applet{Name: api.AppletHelper, Summary: "the privileged helper, as root",
		Run: func(args []string) int { return helper.Main(build, t.Names(), args) }})
	t.Register(registry.Applet{Name: api.AppletAgent, Summary: "the guest agent, as PID 1 inside a VM",
		Run: func(args []string) int { return agent.Main(build, args) }})
	t.Register(registry.Applet{Name: api.AppletClient, Summary: "the command line",
		Run: func(args []string) int {
			return client.Main(client.Env{Build: build, Applets: t.Names(), Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}, args)
		}})
	return t
}

// Main dispatches args to an applet and returns its exit code: the base
// name of args[0], else a first argument naming an applet, else the client.
func Main(build api.Build, args []string) int {
	a, rest, err := Table(build).Select(args, api.AppletClient)
	if err != nil {
		fmt.Fprintf(os.Stderr, "banger: %v\n", err)
		return 2
	}
	return a.Run(rest)
}
