package agent

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"banger/applets/agent/boot"
	"banger/internal/api"
	"banger/logging"
)

// runSystem is PID 1 of the root file system: set the guest up, then
// serve the host until it asks for a power-off (or the power button is
// pressed). It returns only on failure.
func runSystem(log zerolog.Logger, build api.Build, sigs *pid1Signals, records *recordQueue) error {
	start := time.Now()
	if err := mountAll(append(earlyMounts(), systemMounts()...)); err != nil {
		return err
	}
	growRoot(log) // a disk made larger than the image's file system (--disk-size)
	ctx, cancel := context.WithCancel(logging.WithLogger(context.Background(), log))
	defer cancel()
	reaper := newReaper(true)
	go reaper.run(ctx)

	cmd, err := readCmdline()
	if err != nil {
		return err
	}
	hostname := chooseHostname(cmd)
	if err := unix.Sethostname([]byte(hostname)); err != nil {
		return fmt.Errorf("set hostname %s: %w", hostname, err)
	}
	mounted := time.Since(start)
	netStart := time.Now()
	var bootNet boot.Network // what eth0 has: none when setup failed
	if err := setupNetwork(log, cmd); err != nil {
		// A guest without its network is still worth reaching: the
		// daemon can show the error and the console.
		log.Error().Err(err).Msg("network setup failed")
	} else {
		bootNet, _, _ = cmd.Network()
	}
	netTook := time.Since(netStart)
	// Off the path to ready: it may wait for the kernel's randomness.
	go ensureMachineID(log)
	bootID, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return fmt.Errorf("read boot id: %w", err)
	}

	a := &agent{
		build:    build,
		id:       identity{hostname: hostname, bootID: strings.TrimSpace(string(bootID)), net: bootNet},
		log:      log,
		reaper:   reaper,
		records:  records,
		poweroff: make(chan string, 1),
	}
	watchPowerButton(log, a.requestPowerOff)
	sigs.onPower(a.requestPowerOff)
	port, err := openPort(log)
	if err != nil {
		return err
	}
	ch := newChannel(log, port, a)
	go ch.run(ctx)
	log.Info().Str("hostname", hostname).Str("boot_id", a.id.bootID).
		Float64("mounts_ms", logging.Millis(mounted)).Float64("network_ms", logging.Millis(netTook)).
		Float64("duration_ms", logging.Millis(time.Since(start))).Msg("agent up; waiting for the host")

	reason := <-a.poweroff
	log.Info().Str("reason", reason).Msg("powering off")
	// Let calls in flight, the power-off request among them, finish
	// writing their answers before the guest goes; the host's reader of
	// the records gets the last ones, and ends its call.
	records.finish()
	ch.waitIdle(3 * time.Second)
	powerOff(log)
	return nil
}

// chooseHostname takes the kernel command line's, else /etc/hostname's,
// else "banger".
func chooseHostname(cmd boot.Cmdline) string {
	if h := cmd[boot.ParamHostname]; h != "" {
		return h
	}
	if data, err := os.ReadFile("/etc/hostname"); err == nil {
		if h := strings.TrimSpace(string(data)); h != "" {
			return h
		}
	}
	return "banger"
}
