// Package daemon is the bangerd applet: the owner user's daemon that holds
// banger's state and does its work, serving the client over a Unix socket
// and asking the root helper for each privileged step.
//
// It runs in the foreground, as a service does; `banger daemon start` puts
// it in the background. It must never need root itself.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"banger/applets/daemon/engine"
	"banger/applets/daemon/operation"
	"banger/applets/daemon/state"
	"banger/applets/daemon/vm"
	"banger/applets/daemon/vm/qemu"
	"banger/internal/api"
	"banger/internal/layout"
	"banger/internal/service"
	"banger/internal/telemetry"
	"banger/logging"
	"banger/logging/logfile"
	"banger/rpc"
)

// ShutdownGrace bounds how long calls in flight may finish on shutdown.
const ShutdownGrace = 10 * time.Second

// Main runs the daemon with args (args[0] is the applet's name).
func Main(build api.Build, args []string) int {
	app := &cli.App{
		Name:    api.AppletDaemon,
		Usage:   "banger's daemon (runs as the owner user, in the foreground)",
		Version: build.String(),
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", EnvVars: []string{"BANGER_SOCKET"}, Usage: "serve on `PATH` (default $XDG_RUNTIME_DIR/banger/bangerd.sock)"},
			&cli.StringFlag{Name: "state-dir", EnvVars: []string{"BANGER_STATE_DIR"}, Usage: "keep state and logs in `DIR` (default $XDG_STATE_HOME/banger)"},
			&cli.StringFlag{Name: "log-level", EnvVars: []string{logging.EnvLevel}, Value: "info", Usage: "trace, debug, info, warn or error"},
			&cli.IntFlag{Name: "log-max-size", EnvVars: []string{"BANGER_LOG_MAX_SIZE"}, Value: logfile.DefaultMaxSizeMiB, Usage: "rotate the log file (" + layout.DaemonLog + " in the state directory) before it grows past `MIB` MiB"},
			&cli.IntFlag{Name: "log-max-files", EnvVars: []string{"BANGER_LOG_MAX_FILES"}, Value: logfile.DefaultMaxFiles, Usage: "keep `N` rotated log files beside it (the oldest go first)"},
			&cli.StringFlag{Name: "helper", EnvVars: []string{"BANGER_HELPER"}, Value: HelperAuto, Usage: "how to reach the root helper: auto, socket, sudo or none"},
			&cli.StringFlag{Name: "accel", EnvVars: []string{"BANGER_ACCEL"}, Value: "auto", Usage: "VM accelerator: auto (KVM when it can really run a guest, else TCG), kvm or tcg"},
			&cli.StringFlag{Name: "bridge-cidr", EnvVars: []string{"BANGER_BRIDGE_CIDR"}, Value: vm.DefaultBridgeCIDR, Usage: "the `CIDR` of bridge " + vm.DefaultBridge + " (bridged VMs): the bridge is its first host, VMs get the next ones"},
			&cli.StringFlag{Name: "helper-socket", EnvVars: []string{"BANGER_HELPER_SOCKET"}, Usage: "the root helper's socket `PATH` (default " + layout.SystemHelperSocket + " when it exists)"},
			&cli.BoolFlag{Name: "auto-warm", EnvVars: []string{"BANGER_AUTO_WARM"}, Value: true, Usage: "save a warm snapshot of an image after a VM of it boots, when it has none (--auto-warm=false: only `banger image warm` saves them)"},
			&cli.IntFlag{Name: "standbys", EnvVars: []string{"BANGER_STANDBYS"}, Value: 1, Usage: "keep `N` VMs per warm snapshot restored ahead of time and paused, for the next creates to take (user-mode networking; each holds its memory, no CPU); 0: none"},
			&cli.BoolFlag{Name: "standby", EnvVars: []string{"BANGER_STANDBY"}, Value: true, Usage: "false keeps no standbys (as --standbys 0)"},
			&cli.StringFlag{Name: "standby-min-free", EnvVars: []string{"BANGER_STANDBY_MIN_FREE"}, Usage: "make a standby only while it leaves `SIZE` of the host's memory available (default: an eighth of the host's memory, at least 512M)"},
			&cli.IntFlag{Name: "console-max-size", EnvVars: []string{"BANGER_CONSOLE_MAX_SIZE"}, Value: vm.DefaultConsoleMaxMiB, Usage: "keep each VM's console (vm logs) under `MIB` MiB, dropping its oldest part"},
			&cli.StringFlag{Name: "test-hold-stage", EnvVars: []string{"BANGER_TEST_HOLD_STAGE"}, Hidden: true, Usage: "for tests: `VM:STAGE` stops the operations on VM at the start of STAGE until they are canceled"},
			&cli.StringFlag{Name: "debian-mirror", EnvVars: []string{"BANGER_DEBIAN_MIRROR"}, Usage: "the Debian mirror `URL` the default image is built from (default: deb.debian.org, with its updates and security suites)"},
			&cli.IntFlag{Name: "dns-port", EnvVars: []string{"BANGER_DNS_PORT"}, Value: vm.DefaultDNSPort, Usage: "answer NAME.vm for bridged VMs on 127.0.0.1:`PORT` and the bridge's address (0: a free port, -1: none)"},
		},
		Commands: []*cli.Command{newDoctorCommand()},
		Action: func(c *cli.Context) error {
			return run(c.Context, build, options{
				socket:       c.String("socket"),
				stateDir:     c.String("state-dir"),
				level:        c.String("log-level"),
				logRotation:  logfile.Rotation{MaxSizeMiB: c.Int("log-max-size"), MaxFiles: c.Int("log-max-files")},
				helperMode:   c.String("helper"),
				helperSocket: c.String("helper-socket"),
				accel:        c.String("accel"),
				bridgeCIDR:   c.String("bridge-cidr"),
				dnsPort:      c.Int("dns-port"),
				autoWarm:     c.Bool("auto-warm"),
				standbys:     c.Int("standbys"),
				standbyOff:   !c.Bool("standby"),
				minFree:      c.String("standby-min-free"),
				holdStage:    c.String("test-hold-stage"),
				consoleMax:   c.Int("console-max-size"),
				debianMirror: c.String("debian-mirror"),
			})
		},
	}
	return service.Run(app, args)
}

type options struct {
	socket, stateDir, level  string
	logRotation              logfile.Rotation
	helperMode, helperSocket string
	accel                    string
	bridgeCIDR               string
	dnsPort                  int // -1: no DNS responder
	autoWarm                 bool
	standbys                 int
	standbyOff               bool   // --standby=false
	minFree                  string // --standby-min-free; "" is the default
	holdStage                string // --test-hold-stage
	consoleMax               int    // --console-max-size, MiB
	debianMirror             string // --debian-mirror; "" is deb.debian.org
}

func run(ctx context.Context, build api.Build, o options) error {
	level, err := logging.ParseLevel(o.level)
	if err != nil {
		return cli.Exit(err.Error(), service.ExitUsage)
	}
	// Everything the daemon creates (state, logs, sockets) is the owner's
	// alone.
	unix.Umask(0o077)

	if o.stateDir == "" {
		o.stateDir = layout.State()
	}
	if err := layout.EnsureState(o.stateDir); err != nil {
		return cli.Exit("state directory: "+err.Error(), service.ExitFailed)
	}
	if r := o.logRotation; r.MaxSizeMiB < 1 || r.MaxFiles < 1 {
		return cli.Exit(fmt.Sprintf("--log-max-size %d, --log-max-files %d: want 1 or more of each", r.MaxSizeMiB, r.MaxFiles), service.ExitUsage)
	}
	logFile, err := logfile.Open(filepath.Join(o.stateDir, layout.DaemonLog), o.logRotation)
	if err != nil {
		return cli.Exit("open the log: "+err.Error(), service.ExitFailed)
	}
	defer logFile.Close()
	logOut := logging.Tee(os.Stderr, logFile)
	log := logging.New(logOut, api.AppletDaemon, level)
	// The guest agents' records, which their links bring, are written
	// here too, as theirs.
	guestLog := logging.NewRelay(logOut, api.AppletAgent, level)
	fail := func(code int, err error) error {
		log.Error().Err(err).Msg("daemon not started")
		return cli.Exit(err.Error(), code)
	}
	// Spans go out over OTLP when the OTEL_* environment asks for them
	// (package telemetry), flushed last; a bad setting costs the spans,
	// never the daemon.
	tel, err := telemetry.Setup(ctx, api.AppletDaemon, build.String(), log)
	if err != nil {
		log.Warn().Err(err).Msg("spans are not exported")
	}
	defer tel.Close(log)

	if o.socket == "" {
		o.socket = layout.DefaultSocket()
	}
	// The default runtime directory is checked for owner, mode and
	// symlinks; a directory given with --socket is the caller's choice.
	if filepath.Dir(o.socket) == layout.Runtime() {
		if err := layout.EnsurePrivate(layout.Runtime()); err != nil {
			return fail(service.ExitFailed, fmt.Errorf("runtime directory: %w", err))
		}
	} else if err := os.MkdirAll(filepath.Dir(o.socket), 0o700); err != nil {
		return fail(service.ExitFailed, err)
	}
	streamSocket := layout.StreamSocket(o.socket)
	for _, sock := range []string{o.socket, streamSocket} {
		if err := layout.CheckSocketPath(sock); err != nil {
			return fail(service.ExitUsage, err)
		}
	}
	unlock, err := lock(o.socket + layout.LockSuffix)
	if err != nil {
		return fail(service.ExitConflict, err)
	}
	defer unlock()

	helper, err := newHelperLink(o.helperMode, o.helperSocket, o.stateDir)
	if err != nil {
		return fail(service.ExitUsage, err)
	}
	defer helper.Close()

	ln, err := rpc.Listen(o.socket, 0o600)
	if err != nil {
		return fail(service.ExitConflict, err)
	}
	defer ln.Close()
	streamLn, err := rpc.Listen(streamSocket, 0o600)
	if err != nil {
		return fail(service.ExitConflict, err)
	}
	defer streamLn.Close()
	accel, err := engine.ParseAccel(o.accel)
	if err != nil {
		return fail(service.ExitUsage, err)
	}
	bridge, err := vm.ParseBridgeNet(vm.DefaultBridge, o.bridgeCIDR)
	if err != nil {
		return fail(service.ExitUsage, err)
	}
	if o.dnsPort < -1 || o.dnsPort > 65535 || (o.dnsPort > 0 && o.dnsPort < 1024) {
		return fail(service.ExitUsage, fmt.Errorf("--dns-port %d: want 1024 to 65535, 0 (a free port) or -1 (none)", o.dnsPort))
	}
	db, err := state.Open(ctx, filepath.Join(o.stateDir, layout.Database))
	if err != nil {
		return fail(service.ExitFailed, err)
	}
	defer db.Close()
	// NAME.vm is for bridged VMs, which need the helper. A port that is
	// taken (another user's daemon) costs the names, not the daemon.
	if helper.Configured() && o.dnsPort >= 0 {
		stopDNS, err := vm.ServeDNS(ctx, log, o.dnsPort, &bridge, db)
		if err != nil {
			log.Warn().Err(err).Msg("dns responder not started: bridged VMs get no name server")
		} else {
			defer stopDNS()
		}
	}
	d := &daemon{build: build, started: time.Now(), helper: helper, stop: make(chan struct{}), db: db,
		system: o.socket == layout.SystemDaemonSocket}
	d.ops = operation.NewRegistry(d.persistOperation)
	d.ops.Explain = func(err error) error { return fullStateError(o.stateDir, err) }
	d.ops.Hold = o.holdStage
	startCtx := logging.WithLogger(ctx, log)
	interrupted, err := d.recoverOperations(startCtx)
	if err != nil {
		return fail(service.ExitFailed, fmt.Errorf("recover operations: %w", err))
	}
	warmOpts, err := o.warmOptions()
	if err != nil {
		return fail(service.ExitUsage, err)
	}
	d.engine = qemu.New(&engine.QEMU{StateDir: o.stateDir}, accel, &guestLog)
	if d.vms, d.images, err = newVMs(startCtx, vm.Config{StateDir: o.stateDir, Engine: d.engine, Warm: warmOpts,
		DB: db, Ops: d.ops, Helper: helper, Bridge: bridge, Interrupted: interruptedCreates(interrupted),
		DebianMirror: o.debianMirror}); err != nil {
		return fail(service.ExitFailed, err)
	}
	defer d.vms.Shutdown()
	d.images.cleanInterruptedBuilds(startCtx, interrupted)
	if o.consoleMax < 1 {
		return fail(service.ExitUsage, fmt.Errorf("--console-max-size %d: want 1 MiB or more", o.consoleMax))
	}
	keepCtx, stopKeeping := context.WithCancel(startCtx)
	defer stopKeeping()
	go d.vms.KeepConsoles(keepCtx, int64(o.consoleMax)<<20)
	d.kernels = newKernelMethods(d.images, d.ops)
	authorize := rpc.AllowUIDs(uint32(os.Getuid()), 0)
	srv := &rpc.Server{Methods: sayFull(o.stateDir, d.methods()), Authorize: authorize, Logger: log, Spans: tel}
	streams := &rpc.Server{Streams: d.streams(), Authorize: authorize, Logger: log, Spans: tel,
		CallLog: rpc.CallLog{Completed: "session ended", Failed: "session failed", Level: zerolog.InfoLevel}}

	ctx, stopSignals := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stopSignals()
	serveErr := make(chan error, 2)
	go func() { serveErr <- srv.Serve(ln) }()
	go func() { serveErr <- streams.Serve(streamLn) }()
	log.Info().Str("socket", o.socket).Str("state_dir", o.stateDir).Int("pid", os.Getpid()).
		Str("version", build.String()).Str("helper", helper.Describe()).Msg("daemon serving")

	var reason string
	select {
	case <-ctx.Done():
		reason = "signal"
	case <-d.stop:
		reason = "shutdown requested"
	case err := <-serveErr:
		log.Error().Err(err).Msg("serve failed")
		reason = "serve failed"
	}
	// Sessions end at once: the commands they run are in VMs that outlive
	// the daemon, and their clients see the session end without an exit.
	ended, endNow := context.WithCancel(context.Background())
	endNow()
	streams.Shutdown(ended)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		log.Warn().Err(err).Msg("calls still running at shutdown were canceled")
	}
	// Operations still running are canceled and undone, so a clean stop
	// leaves nothing half made.
	if err := d.ops.Shutdown(shutdownCtx); err != nil {
		log.Warn().Err(err).Msg("operations still undoing at shutdown were abandoned")
	}
	ln.Close() // removes the socket file
	streamLn.Close()
	log.Info().Str("reason", reason).Msg("daemon stopped")
	return nil
}

// warmOptions checks the warm-start flags.
func (o options) warmOptions() (vm.WarmOptions, error) {
	w := vm.WarmOptions{Auto: o.autoWarm, Standbys: o.standbys}
	if o.standbyOff {
		w.Standbys = 0
	}
	if w.Standbys < 0 || w.Standbys > vm.MaxStandbys {
		return w, fmt.Errorf("--standbys %d: want 0 to %d", o.standbys, vm.MaxStandbys)
	}
	if o.minFree != "" {
		mib, err := api.ParseMiB("--standby-min-free", o.minFree)
		if err != nil {
			return w, err
		}
		w.MinFree = int64(mib) << 20
	}
	return w, nil
}

// lock takes an exclusive flock on path so that one daemon serves one
// socket; the kernel drops it when the process dies, so a crash never
// leaves a stale lock.
func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another bangerd already serves %s", path[:len(path)-len(layout.LockSuffix)])
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	f.Truncate(0)
	fmt.Fprintf(f, "%d\n", os.Getpid())
	return func() { f.Close() }, nil
}

// daemon holds what the methods share.
type daemon struct {
	build    api.Build
	started  time.Time
	helper   *helperLink
	stop     chan struct{} // closed by the shutdown method, once
	stopOnce sync.Once
	db       *state.DB
	ops      *operation.Registry
	vms      *vm.Service
	images   *imageMethods
	kernels  *kernelMethods
	engine   *qemu.Engine // the VMs' (host.accel asks it)
	system   bool         // serving on the system install's socket: systemd runs it
}
