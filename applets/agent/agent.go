// Package agent is the banger-agent applet: the first process of every
// banger guest. The same binary plays two parts, chosen by what it finds:
//
//   - As /init of the initramfs (a modular distribution kernel), it loads
//     the kernel modules its manifest lists, mounts the root disk and
//     switches to it, executing itself from there.
//   - As PID 1 of the root file system, it mounts /proc, /sys and /dev,
//     sets the hostname, brings up the network, reaps orphans, and serves
//     the daemon on its virtio-serial port: first a Hello that says the
//     guest is ready, then rpc calls on a yamux session (agentlink's wire
//     format): among them sessions that run commands (agent.exec, on
//     pipes or a PTY) and unpack tar streams (agent.untar), and the list
//     of listening ports.
//
// It must never run on a host: it refuses unless it is PID 1, because its
// job is to mount file systems, configure the network and power the
// machine off.
package agent

import (
	"fmt"
	"io"
	"os"

	"github.com/rs/zerolog"

	"banger/internal/api"
	"banger/logging"
)

// Exit codes.
const (
	exitFailed = 1
	exitUsage  = 2
)

const usage = `banger-agent: the first process of a banger guest.

The daemon puts this binary into every image as /sbin/banger-agent and the
kernel starts it as PID 1; it is not a command to run by hand.

  banger-agent --version   print the version
  banger-agent --help      print this text
`

// Main runs the agent with args (args[0] is the applet's name).
func Main(build api.Build, args []string) int {
	if len(args) > 1 {
		switch args[1] {
		case "-h", "--help", "help":
			fmt.Fprint(os.Stdout, usage)
			return 0
		case "-v", "--version", "version":
			fmt.Fprintf(os.Stdout, "%s %s\n", api.AppletAgent, build)
			return 0
		}
	}
	if pid := os.Getpid(); pid != 1 {
		fmt.Fprintf(os.Stderr, "%s: refusing to run as pid %d: the agent is a guest's PID 1 and would mount file systems, configure the network and power the machine off (see --help)\n", api.AppletAgent, pid)
		return exitUsage
	}
	return runPID1(build)
}

// newLogger writes JSON records to w (records.go: to the host's queue,
// and to the console).
func newLogger(w io.Writer) zerolog.Logger {
	level := zerolog.InfoLevel
	if l, err := logging.ParseLevel(os.Getenv(logging.EnvLevel)); err == nil {
		level = l
	}
	return logging.New(w, api.AppletAgent, level)
}
